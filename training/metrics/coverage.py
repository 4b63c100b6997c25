"""Precision, recall, density and coverage of generated images (Naeem et al. 2020).

Each real feature gets a radius: the distance to its k-th nearest real neighbour. Precision:
fraction of generated samples inside some real ball (fidelity). Recall: fraction of real
samples inside some generated ball (diversity). Density counts how many real balls hold each
generated sample (robust to real outliers); coverage is the fraction of real balls holding at
least one generated sample.
"""

from __future__ import annotations

import numpy as np


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0))


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    d = _pairwise(x, x)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def compute(real_features: np.ndarray, fake_features: np.ndarray, k: int = 3) -> dict[str, float]:
    """The four measures for real [N, D] and generated [M, D] features; k < min(N, M)."""
    k = min(k, len(real_features) - 1, len(fake_features) - 1)
    if k < 1:
        raise ValueError(f"coverage needs at least 2 real and 2 generated images, got "
                         f"{len(real_features)} and {len(fake_features)}")
    real_r, fake_r = _radii(real_features, k), _radii(fake_features, k)
    d = _pairwise(real_features, fake_features)  # [N, M]
    inside_real = d < real_r[:, None]  # generated j inside real ball i
    return {
        "precision": float(inside_real.any(0).mean()),
        "recall": float((d < fake_r[None]).any(1).mean()),
        "density": float(inside_real.sum(0).mean() / k),
        "coverage": float((d.min(1) < real_r).mean()),
        "coverage_k": float(k),
    }
