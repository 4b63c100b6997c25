"""Local generation: the service's pipeline (sample, label, select) writing a dataset folder."""

from __future__ import annotations

from pathlib import Path

from service.core.pipeline import Generated, ModelCache, Pipeline, write_generated
from service.core.repository import ModelRepository


def generate_dataset(
    sku: str,
    n: int,
    out: Path,
    models: Path,
    seed: int | None = None,
    version: int | None = None,
    select: str = "green",
) -> Generated:
    """Write `n` labelled images of `sku` that pass `select` to `out` as a YOLO + COCO dataset.

    Exactly what `POST /generate` with `format=zip` returns, as a folder.
    """
    pipeline = Pipeline(ModelCache(ModelRepository(models)))
    result = pipeline.generate(sku, n, seed, version, select)
    write_generated(Path(out), result)
    return result
