"""Kernel Inception Distance (Bińkowski et al. 2018) on any features.

Unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³, averaged over random
subsets. Unlike FID it is unbiased for small sample sizes, which matters with ten real images.
"""

from __future__ import annotations

import numpy as np


def _mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def compute(real_features: np.ndarray, fake_features: np.ndarray, subsets: int = 50,
            subset_size: int = 100, seed: int = 0) -> dict[str, float]:
    """KID (mean and std over subsets) between two feature sets [N, D], each N >= 2."""
    if len(real_features) < 2 or len(fake_features) < 2:
        raise ValueError(f"KID needs at least 2 real and 2 generated images, got "
                         f"{len(real_features)} and {len(fake_features)}")
    rng = np.random.default_rng(seed)
    size = min(subset_size, len(real_features), len(fake_features))
    values = [
        _mmd2(real_features[rng.choice(len(real_features), size, replace=False)],
              fake_features[rng.choice(len(fake_features), size, replace=False)])
        for _ in range(subsets)
    ]
    return {"kid": float(np.mean(values)), "kid_std": float(np.std(values)),
            "kid_subset_size": float(size)}
