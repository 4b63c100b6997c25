"""Few-shot fine-tune: a new SKU's photos in, its next model version published.

`recipe="compose"` (the default) is `training.compose_recipe`. `recipe="gan"`, the thesis'
recipe, is this module: start from the pretrained base, train on the photos, publish. With a
labeller in the repository, every checkpoint is judged like the thesis' Table 4.1
(green / yellow / white / red on `eval_samples` samples) and the best snapshot, not the last,
is published, together with the selector that `/generate` filters samples with.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.core.atomic import write_json_atomic
from service.core.cards import DEFAULT_RECIPE, DEFAULT_REFINE, GENERATOR_RECIPES, GeneratorCard
from service.core.gan_session import latents, to_uint8
from service.core.labeller_session import LabellerSession
from service.core.limits import MAX_PHOTOS, MIN_PHOTOS
from service.core.repository import (
    BASE,
    BASE_FILE,
    LABELLER,
    LATEST_CHECKPOINT,
    ModelRepository,
    ModelVersion,
    validate_sku,
)
from service.core.selector import Selector
from service.core.yolo import read_rows
from training.callbacks import MetricsLog, ProgressBar, SampleGrids, StatusFile
from training.checkpoint import latest_checkpoint, load_checkpoint
from training.config import FINETUNE, TrainConfig
from training.data import data_fingerprint, load_images
from training.evaluate import evaluate_generator, fit_selector, selection_score
from training.export import publish_generator
from training.loop import Callback, Run, train

RECOMMENDED_IMAGES = 10
BEST = "best.pt"
BEST_REPORT = "best_report.json"
SNAPSHOTS = "snapshots.json"


def load_base(models: Path, base: Path | None = None) -> tuple[dict[str, Any], str]:
    """The base checkpoint and a name for it: a run dir or `.pt` file, else `models/_base`."""
    if base is not None:
        return load_checkpoint(base), str(Path(base).resolve())
    version = ModelRepository(models).resolve(BASE)
    return load_checkpoint(version.file(BASE_FILE)), f"{BASE}/{version.version}"


def finetune_config(base: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The base's config with the few-shot changes, then the caller's overrides."""
    cfg = TrainConfig.from_dict(base["config"]).replace(**FINETUNE)
    return cfg.replace(**(overrides or {}))


def count_labels(labels: Path, images: list[Path]) -> dict[str, int]:
    """Validate YOLO label files that pair with the photos by name; count them for the card."""
    stems = {p.stem for p in images}
    files = sorted(Path(labels).glob("*.txt"))
    for f in files:
        if f.stem not in stems:
            raise ValueError(
                f"label file {f.name} matches no image (labels pair with images by name)"
            )
    return {"files": len(files), "boxes": sum(len(read_rows(f)) for f in files)}


class SnapshotJudge(Callback):
    """At every checkpoint, judge the EMA generator and keep the best snapshot as `best.pt`."""

    def __init__(self, selector: Selector, labeller: LabellerSession, status: StatusFile | None):
        self.selector, self.labeller, self.status = selector, labeller, status

    def generate(self, run: Run) -> Callable[[int, int], np.ndarray]:
        def sample(n: int, seed: int) -> np.ndarray:
            z = torch.from_numpy(latents(n, run.cfg.z_dim, seed)).to(run.device)
            with torch.no_grad():
                return to_uint8(run.generator_ema(z).float().cpu().numpy())

        return sample

    def on_train_start(self, run: Run) -> None:
        # A run killed while judging resumes at a checkpoint nobody judged: judge it now, or a
        # fine-tune killed at its last step would publish without its final snapshot compared.
        latest = latest_checkpoint(run.run_dir)
        if latest is not None and run.step not in [h["step"] for h in self.history(latest)]:
            self.on_checkpoint(run, latest)

    @staticmethod
    def history(checkpoint: Path) -> list[dict[str, Any]]:
        record = checkpoint.parent / SNAPSHOTS
        return json.loads(record.read_text()) if record.is_file() else []

    def on_checkpoint(self, run: Run, path: Path) -> None:
        report = evaluate_generator(
            self.generate(run), self.selector, self.labeller, n=run.cfg.eval_samples
        )
        history = [h for h in self.history(path) if h["step"] != run.step]
        score = selection_score(report)
        best = max((h["score"] for h in history), default=-1.0)
        history.append({"step": run.step, "score": score, "categories": report["categories"]})
        # Each file is replaced atomically and the history goes last: after a kill in between,
        # the step is missing from the history and `on_train_start` judges it again.
        if score > best or not (path.parent / BEST).is_file():
            tmp = path.parent / f".{BEST}.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, path.parent / BEST)
            write_json_atomic(path.parent / BEST_REPORT, report)
        write_json_atomic(path.parent / SNAPSHOTS, history)
        if self.status is not None:
            self.status.update(evaluation={"step": run.step, **report["categories"]})


def finetune(
    sku: str,
    images: Path,
    models: Path,
    out: Path | None = None,
    base: Path | None = None,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    status_file: Path | None = None,
    labels: Path | None = None,
    recipe: str = DEFAULT_RECIPE,
    empty: Path | None = None,
    refine: bool = DEFAULT_REFINE,
) -> ModelVersion:
    """Make the SKU's next version from `images` (5 to 100 photos, any size) by `recipe`.

    Rerunning with the same `out` resumes from its last checkpoint; the published version appears
    only once training and export have finished, so a killed fine-tune leaves the previous
    version serving. `empty` (a photo of the empty bin) and `refine` apply to compose only.
    """
    validate_sku(sku)
    if recipe not in GENERATOR_RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(GENERATOR_RECIPES)}, got {recipe!r}")
    models = Path(models)
    out = Path(out) if out else Path("runs") / f"finetune-{sku}-{time.strftime('%Y%m%d-%H%M%S')}"
    status = StatusFile(status_file) if status_file is not None else None
    if recipe == "compose":
        from training.compose_recipe import finetune_compose

        version = finetune_compose(sku, images, models, out, labels, empty, overrides, progress,
                                   status, refine)
        if status is not None:
            status.update(stage="published", version=version.version, card=version.card,
                          report=version.read_card(GeneratorCard).evaluation)
        return version
    if empty is not None:
        raise ValueError("empty: a photo of the empty bin is used by the compose recipe only")
    state, parent = load_base(models, base)
    cfg = finetune_config(state, overrides)
    if cfg.iterations < 1:
        raise ValueError(f"iterations must be at least 1 for a fine-tune, got {cfg.iterations}")
    dataset = load_images(
        images, cfg.resolution, fit=cfg.fit, min_images=MIN_PHOTOS, max_images=MAX_PHOTOS
    )
    selector, callbacks = _callbacks(sku, dataset.images, models, progress, status)
    extra = {
        "sku": sku,
        "parent": parent,
        "data_fingerprint": data_fingerprint(dataset.paths),
        "images": len(dataset.paths),
    }
    if labels is not None:
        extra["labels"] = count_labels(labels, dataset.paths)
    train(cfg, dataset.images, out, callbacks, base=state, extra=extra)
    if status is not None:
        status.update(stage="publishing")
    version = _publish(sku, out, models, selector)
    if status is not None:
        status.update(stage="published", version=version.version, card=version.card,
                      report=version.read_card(GeneratorCard).evaluation)
    return version


def _callbacks(sku: str, photos: torch.Tensor, models: Path, progress: bool,
               status: StatusFile | None) -> tuple[Selector | None, list[Callback]]:
    """The fine-tune's selector (fitted on the photos) and its callbacks.

    Without a labeller there is nothing to judge quality by: no selector, no snapshot judging
    (the last snapshot is published and the service serves unfiltered samples only)."""
    callbacks: list[Callback] = [MetricsLog(), SampleGrids()]
    if progress:
        callbacks.append(ProgressBar(f"finetune {sku}"))
    if status is not None:
        callbacks.append(status)
    selector = None
    if ModelRepository(models).versions(LABELLER):
        labeller = LabellerSession.from_repository(models)
        selector = fit_selector(to_uint8(photos.numpy()), labeller)
        callbacks.append(SnapshotJudge(selector, labeller, status))
    return selector, callbacks


def _publish(sku: str, out: Path, models: Path, selector: Selector | None) -> ModelVersion:
    """Publish the best judged snapshot (the last one without a selector), with the selection
    data and the snapshots' history in its card."""
    checkpoints = latest_checkpoint(out).parent
    snapshot = checkpoints / BEST if selector is not None else checkpoints / LATEST_CHECKPOINT
    card: dict[str, Any] = {"run": str(out.resolve())}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        if selector is not None:
            card["selection"] = selector.save(tmp)
            files = {p.name: p for p in Path(tmp).iterdir()}
            card["snapshots"] = json.loads((checkpoints / SNAPSHOTS).read_text())
            card["evaluation"] = json.loads((checkpoints / BEST_REPORT).read_text())
        return publish_generator(snapshot, sku, models, card=card, extra_files=files)
