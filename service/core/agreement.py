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


def agreement(expected: np.ndarray, found: np.ndarray) -> float:
    """F1 of a greedy one-to-one match (highest IoU first) of two box sets; 1 when both are
    empty."""
    if len(expected) == 0 and len(found) == 0:
        return 1.0
    if len(expected) == 0 or len(found) == 0:
        return 0.0
    iou = iou_matrix(expected, found)
    matched = 0
    while iou.size and iou.max() >= MATCH_IOU:
        i, j = np.unravel_index(int(iou.argmax()), iou.shape)
        matched += 1
        iou[i, :], iou[:, j] = -1, -1
    return 2 * matched / (len(expected) + len(found))


def calibrate(expected: Sequence[np.ndarray], found: Sequence[np.ndarray]) -> float:
    """The agreement an image needs: the photos' lowest, less `TOLERANCE` (at least 0)."""
    if len(expected) != len(found) or not expected:
        raise ValueError("agreement needs the photos' labels and detections, one per photo")
    scores = [agreement(e, f) for e, f in zip(expected, found, strict=True)]
    return max(min(scores) - TOLERANCE, 0.0)
