"""Shared, expensive things for the labeller tests, built once per test session.

A tiny rendered corpus (64×64, four product groups), one held-out group of new products, and
a `yolov5n.yaml` labeller trained on the corpus by `training.labeller.train_labeller` end to
end (split, train, ONNX export, publish). Test modules wrap these in session fixtures; the
`functools.cache` here makes the training run once even when several modules use it.
While the labeller trains, every socket connection is refused and recorded, so a test can
prove that training made no network attempt.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.core.repository import ModelVersion
from training.render import write_corpus
from training.ultralytics_setup import configure_offline

SIZE = (64, 64)
IMGSZ = 64
# From scratch, YOLO finds nothing for its first ~100 optimiser steps with Ultralytics'
# defaults (100 warm-up iterations, gradients accumulated up to a nominal batch of 64). No
# warm-up, no accumulation and a brisk AdamW give varied boxes (low confidence) in seconds.
FAST_TRAIN_ARGS = {"warmup_epochs": 0, "optimizer": "AdamW", "lr0": 0.005, "mosaic": 0.0,
                   "nbs": 8}
EPOCHS = 20


@functools.cache
def scratch() -> Path:
    root = Path(tempfile.mkdtemp(prefix="boxgen-labeller-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    configure_offline(root / "ultralytics")
    return root


@functools.cache
def tiny_corpus() -> Path:
    """Groups 0-3, 12 images each."""
    return write_corpus(scratch() / "corpus", groups=4, per_group=12, size=SIZE, seed=0)


@functools.cache
def heldout_corpus() -> Path:
    """Group 4: a product set the labeller never saw."""
    return write_corpus(scratch() / "heldout", groups=1, per_group=8, size=SIZE, seed=0,
                        first_group=4)


@contextmanager
def refuse_network() -> Iterator[list[object]]:
    """Refuse and record every outgoing socket connection inside the block."""
    attempts: list[object] = []
    original = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise ConnectionRefusedError(f"test refuses network access to {address}")
        return original(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    try:
        yield attempts
    finally:
        socket.socket.connect = original  # type: ignore[method-assign]


@dataclass(frozen=True)
class TrainedLabeller:
    models: Path  # the repository it was published to
    version: ModelVersion
    weights: Path  # Ultralytics best.pt, for comparisons with Ultralytics itself
    corpus: Path
    heldout: Path
    network_attempts: tuple[object, ...]


@functools.cache
def trained_labeller() -> TrainedLabeller:
    from training.labeller import train_labeller

    corpus, heldout = tiny_corpus(), heldout_corpus()
    models, work = scratch() / "models", scratch() / "work"
    with refuse_network() as attempts:
        version = train_labeller(corpus, models, model_cfg="yolov5n.yaml", epochs=EPOCHS,
                                 imgsz=IMGSZ, batch=8, device="cpu", progress=False,
                                 heldout=heldout, work_dir=work, train_args=FAST_TRAIN_ARGS)
    return TrainedLabeller(models, version, work / "train" / "weights" / "best.pt", corpus,
                           heldout, tuple(attempts))
