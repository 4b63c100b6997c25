"""Loop callbacks: progress bar, metrics log + TensorBoard, sample grids, a job status file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from service.core.atomic import read_json, write_json_atomic
from service.core.cards import FinetuneStatus
from training.loop import Callback, Run


class ProgressBar(Callback):
    def __init__(self, description: str = "train"):
        self.description = description
        self.bar: tqdm | None = None

    def on_train_start(self, run: Run) -> None:
        self.bar = tqdm(total=run.total, initial=run.step, desc=self.description, unit="it")

    def on_step_end(self, run: Run, metrics: dict[str, float]) -> None:
        assert self.bar is not None
        self.bar.update(1)
        if run.step % run.cfg.log_every == 0:
            self.bar.set_postfix(d=f"{metrics['loss_d']:.3f}", g=f"{metrics['loss_g']:.3f}")

    def on_train_end(self, run: Run) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsLog(Callback):
    """`metrics.jsonl` in the run dir plus TensorBoard scalars and sample grids under `tb/`."""

    def on_train_start(self, run: Run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.run_dir / "tb"), purge_step=run.step + 1)
        path = run.run_dir / "metrics.jsonl"
        if path.is_file():  # a resumed run redoes the steps after its checkpoint: drop them
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= run.step]
            path.write_text("".join(f"{line}\n" for line in kept))
        self.jsonl = open(path, "a")

    def on_step_end(self, run: Run, metrics: dict[str, float]) -> None:
        if run.step % run.cfg.log_every:
            return
        for key, value in metrics.items():
            if key != "step":
                self.writer.add_scalar(f"train/{key}", value, run.step)
        self.jsonl.write(json.dumps(metrics) + "\n")
        self.jsonl.flush()

    def on_sample(self, run: Run, images: torch.Tensor) -> None:
        nrow = math.ceil(math.sqrt(len(images)))
        grid = make_grid(images, nrow=nrow, normalize=True, value_range=(-1, 1))
        self.writer.add_image("samples", grid, run.step)

    def on_train_end(self, run: Run) -> None:
        self.writer.close()
        self.jsonl.close()


class SampleGrids(Callback):
    """`samples/step-XXXXXX.png`: the thesis' sample grid, on fixed latents, from the EMA."""

    def on_sample(self, run: Run, images: torch.Tensor) -> None:
        out = run.run_dir / "samples" / f"step-{run.step:06d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        nrow = math.ceil(math.sqrt(len(images)))
        save_image(images, out, nrow=nrow, normalize=True, value_range=(-1, 1))


class StatusFile(Callback):
    """Progress as JSON, rewritten atomically, for the service's job records."""

    def __init__(self, path: Path, stage: str = "training"):
        self.path = Path(path)
        self.stage = stage

    def update(self, **fields: Any) -> None:
        """Set `fields` (FinetuneStatus's) and rewrite the file."""
        status = FinetuneStatus.model_validate({**read_json(self.path), **fields})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, status.model_dump(mode="json", exclude_none=True))

    def on_train_start(self, run: Run) -> None:
        self.update(stage=self.stage, iteration=run.step, iterations=run.total)

    def on_step_end(self, run: Run, metrics: dict[str, float]) -> None:
        if run.step % run.cfg.log_every == 0 or run.step == run.total:
            self.update(iteration=run.step, iterations=run.total, metrics=metrics)
