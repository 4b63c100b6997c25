"""Novelty of a generated bin image: how far it is from the nearest training image.

Novelty: distance from an image to its nearest training image. Feature: the image squashed to
64×64, then averaged down to 12×12, each colour channel standardised (zero mean, unit variance),
flattened and scaled to unit RMS; distance is L2, minimised over ±1-pixel shifts (at 64 px) of
the training image. Standardising removes lighting and white balance (a copy under other light
is still a copy); the shift minimum absorbs the sub-object misplacement a memorising GAN makes.
Evidence, rendered corpus (`training.render`, 64×64, 8 groups × 40 images, 10 training images
per group; copies = a training image with ±1 px shift, blur σ 0.5-1, colour ±5 %, noise σ 5,
JPEG q50-90; distances divided by the median leave-one-out distance of the training set):

    feature                copies q99 / max   other arrangements q01 / q05
    pixels 16×16                0.65 / 0.70        0.65 / 0.84     (copies and others overlap)
    pixels 16×16 + shifts       0.44 (q95)         0.84 (q05)
    channel-std 16×16 + shifts  0.42 / 0.46        0.60 / 0.75
    channel-std 12×12 + shifts  0.35 / 0.37        0.59 / 0.77     <- chosen
    channel-std 8×8 + shifts    0.30 / 0.30        0.54 / 0.71
    (multi-scale SSIM, difference-of-Gaussians, a random numpy CNN, 32-64 px pixels: worse;
    without the shift minimum a 1-pixel shift alone moves a copy as far as a new arrangement.)

12×12 keeps the widest gap across 5, 10 and 20 training images (8×8 lets more real
arrangements fall under the threshold at 20; 16×16 lets blurrier copies over it).

Copy threshold: half the median leave-one-out distance (each training image to its nearest
*other* training image, i.e. to a different arrangement of the same products). On the corpus
above this marks 100 % of copies (also with twice the blur and more noise) and 0.4 % of
unseen real arrangements as copies (5-20 training images: at most 1.3 %). `novelty` is the
distance divided by this threshold: below 1 is a copy. The rule assumes few training images (the
fine-tune's ten): with hundreds, real arrangements crowd together and the threshold shrinks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

WORK_SIDE = 64  # images are squashed to this square before shifting; one pixel = one shift step
FEATURE_SIDE = 12  # novelty feature grid (per channel)
SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
COPY_FRACTION = 0.5  # copy threshold = this × median leave-one-out distance


def _squash(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Images to float RGB WORK_SIDE² in [0, 1].  # [N, 64, 64, 3]"""
    out = np.empty((len(images), WORK_SIDE, WORK_SIDE, 3), np.float32)
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] < 3:
            raise ValueError(f"image {i} has shape {image.shape} and dtype {image.dtype}; "
                             "expected uint8 HxWx3")
        pil = Image.fromarray(np.ascontiguousarray(image[..., :3]))
        if pil.size != (WORK_SIDE, WORK_SIDE):
            pil = pil.resize((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
        out[i] = np.asarray(pil, np.float32) / 255.0
    return out


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift [N, H, W, C] by whole pixels, repeating the edge (no wrap-around)."""
    if dy == 0 and dx == 0:
        return x
    h, w = x.shape[1:3]
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return p[:, 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def _grid_features(x: np.ndarray) -> np.ndarray:
    """[N, 64, 64, 3] -> channel-standardised 12×12 grids, unit RMS.  # [N, 432]"""
    n = len(x)
    # Area average to 12×12 with Pillow's BOX filter (64 is not a multiple of 12).
    small = np.stack([
        np.stack([np.asarray(Image.fromarray(x[i, :, :, c], mode="F").resize(
            (FEATURE_SIDE, FEATURE_SIDE), Image.Resampling.BOX)) for c in range(3)], -1)
        for i in range(n)
    ]).astype(np.float32) if n else np.zeros((0, FEATURE_SIDE, FEATURE_SIDE, 3), np.float32)
    small = small - small.mean((1, 2), keepdims=True)
    # 0.02: a flat channel (an empty, evenly lit image) stays flat instead of amplifying noise.
    small = small / np.maximum(small.std((1, 2), keepdims=True), 0.02)
    return small.reshape(n, -1) / math.sqrt(FEATURE_SIDE * FEATURE_SIDE * 3)


def novelty_features(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Novelty features of uint8 images (any size, squashed to a square).  # [N, D]"""
    return _grid_features(_squash(images))


def shifted_features(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Features of every ±1-pixel shift of each image (the training side).  # [N, 9, D]"""
    x = _squash(images)
    return np.stack([_grid_features(_shift(x, dy, dx)) for dy, dx in SHIFTS], axis=1)


def distances(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """L2 distance of each feature [N, D] to each reference image [M, S, D], min over shifts.

    Returns [N, M].
    """
    m, s, d = reference.shape
    flat = reference.reshape(m * s, d)
    sq = (features**2).sum(1)[:, None] + (flat**2).sum(1)[None] - 2 * features @ flat.T
    return np.sqrt(np.maximum(sq, 0)).reshape(len(features), m, s).min(2)


def leave_one_out(reference: np.ndarray) -> np.ndarray:
    """Each reference image's distance to its nearest *other* reference image.  # [M]"""
    d = distances(reference[:, SHIFTS.index((0, 0))], reference)
    np.fill_diagonal(d, np.inf)
    return d.min(1)
