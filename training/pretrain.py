"""Pretraining: learn "products in a bin" in general from a labelled corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.core.repository import ModelVersion
from training.callbacks import MetricsLog, ProgressBar, SampleGrids, StatusFile
from training.config import TrainConfig
from training.data import data_fingerprint, load_images
from training.export import publish_base
from training.loop import Callback, Run, train


def pretrain(
    cfg: TrainConfig,
    data: Path,
    out: Path,
    progress: bool = True,
    status_file: Path | None = None,
) -> Run:
    """Train a generator and critic from scratch on `data` (YOLO layout or a plain folder)."""
    dataset = load_images(data, cfg.resolution, fit=cfg.fit)
    callbacks: list[Callback] = [MetricsLog(), SampleGrids()]
    if progress:
        callbacks.append(ProgressBar("pretrain"))
    if status_file is not None:
        callbacks.append(StatusFile(status_file))
    extra = {
        "data": str(Path(data).resolve()),
        "data_fingerprint": data_fingerprint(dataset.paths),
        "images": len(dataset.paths),
    }
    return train(cfg, dataset.images, out, callbacks, extra=extra)


def publish_pretrained(run_dir: Path, models: Path, refiner: dict[str, Any] | None = None
                       ) -> ModelVersion:
    """Publish a finished pretraining run as the base that fine-tunes start from, with the
    pretrained refiner when given (`training.compose_recipe.pretrain_refiner`)."""
    return publish_base(run_dir, models, card={"run": str(Path(run_dir).resolve())},
                        refiner=refiner)
