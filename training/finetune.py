"""Few-shot fine-tune: start from the pretrained base, train on a new SKU's photos, publish."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from service.repository import BASE, ModelRepository, ModelVersion, validate_sku
from training.callbacks import MetricsLog, ProgressBar, SampleGrids, StatusFile
from training.checkpoint import latest_checkpoint, load_checkpoint
from training.config import FINETUNE, TrainConfig
from training.data import data_fingerprint, load_images
from training.export import publish_generator
from training.loop import Callback, train

MIN_IMAGES = 5  # below this the critic memorises the set within a few hundred steps
MAX_IMAGES = 100  # beyond this it is a pretraining corpus, not a few-shot fine-tune
RECOMMENDED_IMAGES = 10


def load_base(models: Path, base: Path | None = None) -> tuple[dict[str, Any], str]:
    """The base checkpoint and a name for it: a run dir or `.pt` file, else `models/_base`."""
    if base is not None:
        return load_checkpoint(base), str(Path(base).resolve())
    version = ModelRepository(models).resolve(BASE)
    return load_checkpoint(version.file("base.pt")), f"{BASE}/{version.version}"


def finetune_config(base: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The base's config with the few-shot changes, then the caller's overrides."""
    cfg = TrainConfig.from_dict(base["config"]).replace(**FINETUNE)
    return cfg.replace(**(overrides or {}))


def finetune(
    sku: str,
    images: Path,
    models: Path,
    out: Path | None = None,
    base: Path | None = None,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    status_file: Path | None = None,
) -> ModelVersion:
    """Fine-tune the base on `images` (5 to 100 photos, any size) and publish the SKU's new version.

    Rerunning with the same `out` resumes from its last checkpoint; the published version appears
    only once training and export have finished, so a killed fine-tune leaves the previous
    version serving.
    """
    validate_sku(sku)
    state, parent = load_base(Path(models), base)
    cfg = finetune_config(state, overrides)
    dataset = load_images(
        images, cfg.resolution, fit=cfg.fit, min_images=MIN_IMAGES, max_images=MAX_IMAGES
    )
    out = Path(out) if out else Path("runs") / f"finetune-{sku}-{time.strftime('%Y%m%d-%H%M%S')}"

    callbacks: list[Callback] = [MetricsLog(), SampleGrids()]
    if progress:
        callbacks.append(ProgressBar(f"finetune {sku}"))
    status = StatusFile(status_file) if status_file is not None else None
    if status is not None:
        callbacks.append(status)
    extra = {
        "sku": sku,
        "parent": parent,
        "data_fingerprint": data_fingerprint(dataset.paths),
        "images": len(dataset.paths),
    }
    train(cfg, dataset.images, out, callbacks, base=state, extra=extra)

    if status is not None:
        status.update(stage="publishing")
    version = publish_generator(latest_checkpoint(out), sku, models, card={"run": str(out)})
    if status is not None:
        status.update(stage="published", version=version.version, card=version.card)
    return version
