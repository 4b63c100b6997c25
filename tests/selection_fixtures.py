"""Shared, expensive things for the selection and evaluation tests, built once per session.

A `yolov5n.yaml` labeller trained by `training.labeller.train_labeller` on one product group
(group 10: a spray, a tube and a can; 64 images at 64×64, labeller input 128 px, ~40 s on two
cores). One group is enough for a labeller that finds every whole product at high confidence,
which the sanity checks need; the labeller tests' four-group fixture trains too briefly to find
anything. Helpers render more arrangements of the same group: training images (the first ten
the labeller saw), new arrangements it never saw, and the same products cut in half.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from tests import labeller_fixtures
from training.render import make_group, render_image, write_corpus

GROUP = 10
SIZE = (64, 64)
CORPUS_SEED = 0
ARRANGEMENT_KEY = 0x1A  # write_corpus' rng key: index i here is the corpus' image i
TRAIN_ARGS = {"warmup_epochs": 0, "optimizer": "SGD", "lr0": 0.02, "mosaic": 0.0, "scale": 0.1}


def scratch() -> Path:
    """This module's folder inside the shared test scratch root (offline Ultralytics set up)."""
    folder = labeller_fixtures.scratch() / "selection"
    folder.mkdir(exist_ok=True)
    return folder


@functools.cache
def models() -> Path:
    """A model repository holding the one-group labeller."""
    from training.labeller import train_labeller

    corpus = write_corpus(scratch() / "corpus", groups=1, per_group=64, size=SIZE,
                          seed=CORPUS_SEED, first_group=GROUP)
    repo = scratch() / "models"
    train_labeller(corpus, repo, model_cfg="yolov5n.yaml", epochs=50, imgsz=128, batch=8,
                   device="cpu", progress=False, train_args=TRAIN_ARGS)
    return repo


def arrangements(start: int, n: int, partial: bool = False) -> np.ndarray:
    """Images `start .. start+n-1` of the group (index < 64: in the labeller's corpus).

    Partial images use other arrangements than whole ones.  # [n, 64, 64, 3] uint8
    """
    products = make_group(CORPUS_SEED, GROUP)
    key = 0x99 if partial else ARRANGEMENT_KEY
    return np.stack([
        np.asarray(render_image(products, SIZE, np.random.default_rng(
            [CORPUS_SEED, GROUP, i, key]), partial=partial)[0])
        for i in range(start, start + n)
    ])
