"""The distribution of novelty (distance to the nearest training image / copy threshold).

Reports quantiles rather than a mean (DESIGN.md section 5): a generator that copies half its
training set and invents wildly otherwise has a fine mean and a terrible lower quartile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def compute(novelty: Sequence[float]) -> dict[str, float]:
    """Quantiles of novelty, the copy fraction (< 1), and how many training images are hit."""
    values = np.asarray(novelty, np.float64)
    if len(values) == 0:
        raise ValueError("no images to measure novelty on")
    q = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "novelty_q05": float(q[0]), "novelty_q25": float(q[1]), "novelty_median": float(q[2]),
        "novelty_q75": float(q[3]), "novelty_q95": float(q[4]),
        "novelty_mean": float(values.mean()),
        "copy_fraction": float((values < 1).mean()),
    }


def nearest_spread(nearest: Sequence[int], train_images: int) -> dict[str, float]:
    """How many training images are someone's nearest neighbour (mode collapse shows as few)."""
    hit = len(set(int(i) for i in nearest))
    return {"nearest_distinct": float(hit), "nearest_distinct_fraction": hit / max(train_images, 1)}
