"""The published generator, run with onnxruntime: latent vectors in, uint8 images out."""

from __future__ import annotations

import os

import numpy as np

from service.core.onnx_session import SlicedSession
from service.core.seeds import image_seeds, stream


def latents(n: int, z_dim: int, seed: int | None) -> np.ndarray:
    """`n` standard-normal latent vectors, the same for the same seed.  # [n, z_dim]"""
    return np.random.default_rng(seed).standard_normal((n, z_dim), dtype=np.float32)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Generator output in [-1, 1], NCHW, to uint8 NHWC."""
    images = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return images.transpose(0, 2, 3, 1)


class GeneratorSession:
    """A generator ONNX file (`z` [N, z_dim] -> `image` [N, 3, H, W] in [-1, 1])."""

    def __init__(self, path: str | os.PathLike[str], batch_size: int = 64):
        self.session = SlicedSession(path)
        z = self.session.get_inputs()[0]
        self.input_name = z.name
        self.z_dim = int(z.shape[1])
        self.resolution = int(self.session.get_outputs()[0].shape[-1])
        self.batch_size = batch_size

    def run(self, z: np.ndarray) -> np.ndarray:
        """Raw generator output for latent vectors `z`, in batches.  # [N, 3, H, W]"""
        parts = [
            self.session.run(None, {self.input_name: z[i : i + self.batch_size]})[0]
            for i in range(0, len(z), self.batch_size)
        ]
        return (
            np.concatenate(parts)
            if parts
            else np.zeros((0, 3, self.resolution, self.resolution), np.float32)
        )

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """`n` images as uint8 NHWC; the same seed gives the same images."""
        return self.sample_seeded(image_seeds(stream(seed), 0, n))

    def sample_seeded(self, seeds: list[int]) -> np.ndarray:
        """One image per seed (`service.core.seeds`), uint8 NHWC."""
        z = [np.random.default_rng(s).standard_normal(self.z_dim, dtype=np.float32)
             for s in seeds]
        return to_uint8(self.run(np.stack(z) if z else np.zeros((0, self.z_dim), np.float32)))
