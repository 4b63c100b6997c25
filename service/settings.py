"""Service settings, read once from the environment (what `boxgen serve` and Kubernetes set).

Every worker process reads the same variables, so all workers agree without sharing state.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from service.core.limits import MAX_PHOTOS, MIN_PHOTOS

MODELS_ENV = "BOXGEN_MODELS"
API_KEY_ENV = "BOXGEN_API_KEY"
API_KEY_FILE_ENV = "BOXGEN_API_KEY_FILE"


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


# BentoML threads per worker for the API: requests working at once. Inference runs one network
# call at a time whatever this is; requests in flight together share those calls
# (`service.core.batching`), so more threads make larger shared batches, not contention.
# Compose requests, whose work is mostly their own CPU work, run `compose_slots` at a time.
REQUEST_THREADS = 32

@dataclass(frozen=True)
class ServiceSettings:
    models: Path  # model repository root (BOXGEN_MODELS); jobs live in <models>/_jobs
    max_n: int = 256  # most images one /generate request may ask for (BOXGEN_MAX_N)
    max_tries_factor: int = 20  # selection draws at most n * this samples (BOXGEN_MAX_TRIES_FACTOR)
    min_images: int = MIN_PHOTOS  # fewest photos a /finetune upload may hold (BOXGEN_MIN_IMAGES)
    max_images: int = MAX_PHOTOS  # most photos a /finetune upload may hold (BOXGEN_MAX_IMAGES)
    max_upload_bytes: int = 200 * 2**20  # whole /finetune body (BOXGEN_MAX_UPLOAD_BYTES)
    max_file_bytes: int = 20 * 2**20  # one uploaded file (BOXGEN_MAX_FILE_BYTES)
    max_pixels: int = 40_000_000  # one uploaded image, width * height (BOXGEN_MAX_PIXELS)
    default_iterations: int | None = None  # None: the fine-tune's own default (from the base)
    max_iterations: int = 100_000  # most fine-tune iterations a request may ask for
    finetune_args: tuple[str, ...] = ()  # extra `boxgen finetune` flags (BOXGEN_FINETUNE_ARGS)
    generator_cache: int = 16  # generator sessions kept open per worker
    # /generate requests one worker holds at once (working or waiting for one of its
    # REQUEST_THREADS); one more is refused at once with 503 and Retry-After (BOXGEN_MAX_IN_FLIGHT).
    max_in_flight: int = 64
    # Compose requests one worker runs at once; the others wait their turn (BOXGEN_COMPOSE_SLOTS;
    # 0: its share of the CPUs + 1, see `service.core.pipeline.Pipeline`).
    compose_slots: int = 0

    @classmethod
    def from_env(cls) -> ServiceSettings:
        models = os.environ.get(MODELS_ENV, "").strip() or "models"
        return cls(
            models=Path(models).resolve(),
            max_n=_int_env("BOXGEN_MAX_N", cls.max_n),
            max_tries_factor=_int_env("BOXGEN_MAX_TRIES_FACTOR", cls.max_tries_factor),
            min_images=_int_env("BOXGEN_MIN_IMAGES", cls.min_images),
            max_images=_int_env("BOXGEN_MAX_IMAGES", cls.max_images),
            max_upload_bytes=_int_env("BOXGEN_MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            max_file_bytes=_int_env("BOXGEN_MAX_FILE_BYTES", cls.max_file_bytes),
            max_pixels=_int_env("BOXGEN_MAX_PIXELS", cls.max_pixels),
            default_iterations=_int_env("BOXGEN_FINETUNE_ITERATIONS", 0) or None,
            max_iterations=_int_env("BOXGEN_MAX_ITERATIONS", cls.max_iterations),
            finetune_args=tuple(shlex.split(os.environ.get("BOXGEN_FINETUNE_ARGS", ""))),
            max_in_flight=_int_env("BOXGEN_MAX_IN_FLIGHT", cls.max_in_flight),
            compose_slots=_int_env("BOXGEN_COMPOSE_SLOTS", cls.compose_slots),
        )


def load_api_key() -> str | None:
    """The API key from BOXGEN_API_KEY, or the file at BOXGEN_API_KEY_FILE (a mounted secret).

    None means the service is open. A named key file that is missing or empty is an error:
    silently serving without the key an operator meant to set would be worse.
    """
    key = os.environ.get(API_KEY_ENV, "").strip()
    if key:
        return key
    key_file = os.environ.get(API_KEY_FILE_ENV, "").strip()
    if not key_file:
        return None
    path = Path(key_file)
    if not path.is_file():
        raise FileNotFoundError(f"{API_KEY_FILE_ENV} names {path}, which does not exist")
    key = path.read_text().strip()
    if not key:
        raise ValueError(f"API key file {path} ({API_KEY_FILE_ENV}) is empty")
    return key
