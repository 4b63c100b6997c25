"""The published refiner, run with onnxruntime: uint8 composites and masks in, uint8 out.

Torch-free, like every `service.core` module: training exports the file
(`training.refiner.export_refiner`), the `compose` recipe runs it here.
"""

from __future__ import annotations

import os

import numpy as np

from service.core.gan_session import to_uint8
from service.core.onnx_session import open_session

BATCH_PIXELS = 16 * 256 * 256  # pixels per run: activations stay ~1 GB at 32 channels


class RefinerSession:
    """A refiner ONNX file: ("composite" [N, 3, H, W], "mask" [N, 1, H, W]) -> "image"."""

    def __init__(self, path: str | os.PathLike[str], batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.session = open_session(path)
        self.batch_size = batch_size

    def refine(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Refine uint8 composites [N, H, W, 3] given their product masks [N, H, W] in [0, 1].

        Returns uint8 [N, H, W, 3]; runs in batches of `batch_size`, fewer for large images (at
        most `BATCH_PIXELS` pixels per run: a 1024 px batch of 16 would hold gigabytes of
        activations); N = 0 gives an empty batch.
        """
        if images.ndim != 4 or images.shape[3] != 3 or masks.shape != images.shape[:3]:
            raise ValueError(
                f"expected images [N, H, W, 3] and masks [N, H, W], got {list(images.shape)} "
                f"and {list(masks.shape)}"
            )
        if len(images) == 0:
            return np.zeros(images.shape, np.uint8)
        batch = max(1, min(self.batch_size, BATCH_PIXELS // (images.shape[1] * images.shape[2])))
        parts = []
        for i in range(0, len(images), batch):
            # uint8 NHWC -> float NCHW in [-1, 1], the network's scale.
            comp = images[i : i + batch].transpose(0, 3, 1, 2).astype(np.float32)
            comp = comp / np.float32(127.5) - np.float32(1.0)
            mask = np.asarray(masks[i : i + batch], np.float32)[:, None]
            (out,) = self.session.run(None, {"composite": comp, "mask": mask})
            parts.append(to_uint8(out))
        return np.concatenate(parts)
