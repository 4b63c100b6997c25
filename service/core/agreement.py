"""Label agreement: do the labeller's boxes on an image match the labels it was built with?

A composed image's labels are exact by construction, but the image may still fail to show
what they say: a product the refiner washed out, a cut-out the labeller cannot recognise, a
shadow that reads as a product. The labeller then disagrees, and the image is not served.

Agreement is the F1 of matching the two box sets one to one at IoU >= `MATCH_IOU`, class
ignored (the labeller's classes are its corpus's, not the SKU's). The labeller misses some
products on the real photos too, so the bar is calibrated there: an image agrees when its F1
is at least the photos' lowest, less `TOLERANCE`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MATCH_IOU = 0.5
TOLERANCE = 0.1


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` [n, 4] with every box in `b` [m, 4] (x1 y1 x2 y2).  # [n, m]"""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def agreement(expected: np.ndarray, found: np.ndarray, parts: np.ndarray | None = None
              ) -> float:
    """F1 of a greedy one-to-one match (highest IoU first) of two box sets; 1 when both are
    empty. `parts` ([m] bool over `found`): boxes the labeller found inside a product (a
    label, a cap; `quality.products`): matched, they count; left over, they are not a
    product too many."""
    expected = np.asarray(expected).reshape(-1, 4)
    found = np.asarray(found).reshape(-1, 4)
    used = np.zeros(len(found), bool)
    if len(expected) and len(found):
        iou = iou_matrix(expected, found)
        while iou.max() >= MATCH_IOU:
            i, j = np.unravel_index(int(iou.argmax()), iou.shape)
            used[j] = True
            iou[i, :], iou[:, j] = -1, -1
    extra = ~used if parts is None else ~used & ~np.asarray(parts, bool)
    counted = len(expected) + used.sum() + extra.sum()
    return 2 * float(used.sum()) / counted if counted else 1.0


def calibrate(expected: Sequence[np.ndarray], found: Sequence[np.ndarray],
              parts: Sequence[np.ndarray] | None = None) -> float:
    """The agreement an image needs: the photos' lowest, less `TOLERANCE` (at least 0)."""
    if len(expected) != len(found) or not expected:
        raise ValueError("agreement needs the photos' labels and detections, one per photo")
    parts = parts if parts is not None else [None] * len(found)
    scores = [agreement(e, f, p) for e, f, p in zip(expected, found, parts, strict=True)]
    return max(min(scores) - TOLERANCE, 0.0)
