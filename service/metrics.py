"""The service's own Prometheus metrics (`boxgen_*`), exposed on `/metrics` beside BentoML's.

BentoML runs each worker as its own process with `PROMETHEUS_MULTIPROC_DIR` set in the worker's
environment before this module is imported, so `prometheus_client` writes every value to
per-process files and `/metrics` merges them (`MultiProcessCollector`). Two rules follow:

- Define metrics at import time, once per process, in this module only (a second definition of
  the same name raises, and a metric made before the variable is set would stay invisible).
- Gauges need a `multiprocess_mode` saying how worker values combine: "livemax" for
  per-worker states that every worker holds alike (models loaded), "livemostrecent" for
  figures one worker measures for all (job counts, GPU memory), "livesum" for per-worker
  shares of one total (requests in flight).

The names and labels are a contract with the dashboards and alerts in `k8s/`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Hashable
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from service.core.pipeline import ModelCache

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)
IMAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
FINETUNE_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)

REQUESTS = Counter(
    "boxgen_requests_total",
    "API requests by endpoint, SKU (empty when none) and HTTP status.",
    ["endpoint", "sku", "status"],
)
IMAGES_GENERATED = Counter(
    "boxgen_images_generated_total", "Images returned by /generate.", ["sku"]
)
GENERATE_LATENCY = Histogram(
    "boxgen_generate_latency_seconds",
    "Wall time of one successful /generate request, sampling to encoding.",
    ["sku"],
    buckets=LATENCY_BUCKETS,
)
IMAGE_SECONDS = Histogram(
    "boxgen_image_seconds",
    "Generate latency divided by the images returned (per-image cost).",
    ["sku"],
    buckets=IMAGE_BUCKETS,
)
SAMPLES = Counter(
    "boxgen_samples_total", "Generator samples drawn (before selection).", ["sku"]
)
SAMPLES_SELECTED = Counter(
    "boxgen_samples_selected_total",
    "Samples that passed selection; divide by boxgen_samples_total for the pass rate.",
    ["sku"],
)
FINETUNE_JOBS_TOTAL = Counter(
    "boxgen_finetune_jobs_total", "Fine-tune jobs that entered each state.", ["state"]
)
# Not `boxgen_finetune_jobs`: prometheus_client names the counter above's family that, and a
# gauge of the same name collides with it (DuplicateTimeseries at import).
FINETUNE_JOBS = Gauge(
    "boxgen_finetune_jobs_current",
    "Fine-tune jobs now in each state (as recorded in the job store).",
    ["state"],
    multiprocess_mode="livemostrecent",
)
FINETUNE_DURATION = Histogram(
    "boxgen_finetune_duration_seconds",
    "Wall time of finished fine-tune jobs (succeeded or failed), start to end.",
    buckets=FINETUNE_BUCKETS,
)
MODELS_LOADED = Gauge(
    "boxgen_models_loaded",
    "ONNX sessions open in a worker, by kind (generator | labeller).",
    ["kind"],
    multiprocess_mode="livemax",
)
REJECTED = Counter(
    "boxgen_requests_rejected_total",
    "API requests refused before any work by endpoint and reason (overload: the worker "
    "already held BOXGEN_MAX_IN_FLIGHT requests); each is also in boxgen_requests_total.",
    ["endpoint", "reason"],
)
IN_FLIGHT = Gauge(
    "boxgen_requests_in_flight",
    "Requests a worker is working on or holding for a thread, by endpoint (summed over "
    "workers).",
    ["endpoint"],
    multiprocess_mode="livesum",
)
BATCH_REQUESTS = Histogram(
    "boxgen_inference_batch_requests",
    "Requests that shared one network call, by stage (sample: the compose refiner or the "
    "gan generator; label: the labeller). Above 1 when concurrent requests are batched together.",
    ["stage"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
GPU_MEMORY = Gauge(
    "boxgen_gpu_memory_bytes",
    "GPU memory in use per device, from nvidia-smi (absent without a GPU).",
    ["device"],
    multiprocess_mode="livemostrecent",
)


def record_request(endpoint: str, status: int, sku: str | None = None) -> None:
    """Count one answered request."""
    REQUESTS.labels(endpoint=endpoint, sku=sku or "", status=str(status)).inc()


def record_rejection(endpoint: str, reason: str) -> None:
    """Count one request refused before any work (admission control)."""
    REJECTED.labels(endpoint=endpoint, reason=reason).inc()


def record_generation(sku: str, seconds: float, returned: int, tried: int, passed: int) -> None:
    """Record one successful /generate: latency, images, and how many samples passed."""
    GENERATE_LATENCY.labels(sku=sku).observe(seconds)
    if returned:
        IMAGE_SECONDS.labels(sku=sku).observe(seconds / returned)
    IMAGES_GENERATED.labels(sku=sku).inc(returned)
    SAMPLES.labels(sku=sku).inc(tried)
    SAMPLES_SELECTED.labels(sku=sku).inc(passed)


def record_batch(key: Hashable, requests: int) -> None:
    """One network call that `requests` requests shared (`service.core.batching`); the key's
    first entry names the stage."""
    stage = key[0] if isinstance(key, tuple) else str(key)
    BATCH_REQUESTS.labels(stage=stage).observe(requests)


def record_models_loaded(cache: ModelCache) -> None:
    """The loaded-models gauge from a worker's model cache."""
    MODELS_LOADED.labels(kind="generator").set(len(cache.generators))
    MODELS_LOADED.labels(kind="labeller").set(int(cache.labeller is not None))


def update_gpu_memory() -> None:
    """Set `boxgen_gpu_memory_bytes` from `nvidia-smi`; does nothing on machines without it.

    `nvidia-smi` avoids a pynvml dependency and sees memory used by every process on the GPU
    (all workers and a running fine-tune), which is what capacity alerts need.
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return
    for line in out.strip().splitlines():
        index, _, used_mib = (part.strip() for part in line.partition(","))
        if index.isdigit() and used_mib.replace(".", "", 1).isdigit():
            GPU_MEMORY.labels(device=index).set(float(used_mib) * 2**20)


SKU_STATE_KEY = "boxgen_sku"  # scope["state"] key API methods set so requests count by SKU


def endpoint_name(method: str, path: str) -> str | None:
    """The `endpoint` label for a request, or None for paths that are not boxgen's API."""
    if path in ("/generate", "/finetune", "/models", "/jobs"):
        return path[1:]
    if path.startswith("/jobs/"):
        return "cancel_job" if method == "DELETE" else "job"
    return None


class RequestMetricsMiddleware:
    """Count every API request by endpoint, SKU and status, including those refused before
    the API method runs (401, 413, 400 from validation)."""

    def __init__(self, app):  # noqa: ANN001 (an ASGI app)
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        endpoint = endpoint_name(scope.get("method", ""), scope.get("path", "")) if (
            scope["type"] == "http") else None
        if endpoint is None:
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        status = 500  # what the client sees if the app fails before answering
        recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                record_request(endpoint, status, state.get(SKU_STATE_KEY))

        async def send_and_count(message):  # noqa: ANN001
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            if message["type"] == "http.response.body" and not message.get("more_body"):
                # Count before the last byte leaves: a client that has its answer also sees
                # it counted (the app may return only later, when the client disconnects).
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            record()
