"""A published compose version, run without torch: compose from its object bank, then refine.

The counterpart of `gan_session.GeneratorSession` for `recipe: compose`: a seed in, images and
their labels (exact, by construction) out, at any size up to `compose.MAX_SIZE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.core.compose import DEFAULT_SIZE, ComposeSettings, Distractors, compose
from service.core.cpu_pool import cpu_map
from service.core.labeller_session import Detections
from service.core.object_bank import ObjectBank
from service.core.refiner_session import RefinerSession
from service.core.repository import REFINER_FILE
from service.core.seeds import image_seeds, stream


@dataclass(frozen=True)
class ComposedLabels(Detections):
    """A composite's labels (confidence 1: by construction), with which are distractors."""

    foreign: np.ndarray  # [k] bool


class ComposeSession:
    """A compose version's object bank and, when it has one, its refiner."""

    def __init__(self, bank: ObjectBank, refiner: str | Path | None = None,
                 settings: ComposeSettings | None = None):
        self.bank = bank
        self.refiner = RefinerSession(refiner) if refiner is not None else None
        self.settings = settings or ComposeSettings()

    @classmethod
    def from_folder(cls, folder: str | Path) -> ComposeSession:
        """The bank in `folder` (a version, or a staged one) with its refiner if it has one."""
        refiner = Path(folder) / REFINER_FILE
        return cls(ObjectBank.load(folder), refiner if refiner.is_file() else None)

    @property
    def classes(self) -> list[str]:
        return self.bank.names

    def compose(self, seeds: list[int], size: int = DEFAULT_SIZE,
                distractors: Distractors | None = None
                ) -> tuple[np.ndarray, np.ndarray, list[ComposedLabels]]:
        """One composite per seed (`service.core.seeds`) before refinement, on the worker's
        CPU pool (`cpu_pool`): (images uint8 [n, H, W, 3], masks float32 [n, H, W], labels)."""
        composites = cpu_map(lambda s: compose(self.bank, size, np.random.default_rng(s),
                                               self.settings, distractors), seeds)
        labels = [ComposedLabels(c.boxes, c.cls, np.ones(len(c.cls), np.float32),
                                 c.image.shape[:2], c.foreign) for c in composites]
        if not composites:
            return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size)), labels
        return (np.stack([c.image for c in composites]), np.stack([c.mask for c in composites]),
                labels)

    def sample(self, n: int, seed: int | None = None, size: int = DEFAULT_SIZE,
               distractors: Distractors | None = None
               ) -> tuple[np.ndarray, list[ComposedLabels]]:
        """`n` images (refined when the version has a refiner) and their labels; the same
        seed gives the same images."""
        images, masks, labels = self.compose(image_seeds(stream(seed), 0, n), size, distractors)
        if self.refiner is not None and len(images):
            images = self.refiner.refine(images, masks)
        return images, labels
