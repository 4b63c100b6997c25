"""Label agreement: one-to-one matching at IoU 0.5, and its bar calibrated on the photos."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.agreement import agreement, calibrate, iou_matrix

BOXES = np.array([[0, 0, 10, 10], [20, 20, 40, 30], [50, 0, 60, 40]], np.float64)


def test_iou_of_known_boxes():
    iou = iou_matrix(BOXES[:1], np.array([[0, 0, 10, 10], [5, 0, 15, 10], [30, 30, 40, 40]]))
    assert iou[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])


def test_agreement_is_the_f1_of_a_one_to_one_match():
    assert agreement(BOXES, BOXES + 1) == 1.0
    assert agreement(BOXES, BOXES[:2]) == pytest.approx(2 * 2 / 5)  # a product lost
    extra = np.vstack([BOXES, [[70, 70, 80, 80]]])
    assert agreement(BOXES, extra) == pytest.approx(2 * 3 / 7)  # one added
    moved = BOXES.copy()
    moved[0] += 8  # IoU 4/196 with where the label says
    assert agreement(BOXES, moved) == pytest.approx(2 * 2 / 6)
    # Two detections on one product match it once.
    assert agreement(BOXES[:1], np.vstack([BOXES[:1], BOXES[:1] + 1])) == pytest.approx(2 / 3)
    empty = np.zeros((0, 4))
    assert agreement(empty, empty) == 1.0 and agreement(BOXES, empty) == 0.0
    # A box the labeller found inside a product (a label) is no product too many, left over;
    # a part that is all the labeller found of a product still matches it.
    label = BOXES[:1] + [[2, 2, -2, -2]]
    with_label = np.vstack([BOXES, label])
    assert agreement(BOXES, with_label, np.array([False] * 3 + [True])) == 1.0
    assert agreement(BOXES, with_label) == pytest.approx(2 * 3 / 7)
    most = BOXES[:1] + [[1, 1, -1, -1]]  # IoU 0.64 with the product
    assert agreement(BOXES[:1], most, np.array([True])) == 1.0


def test_the_bar_is_the_photos_lowest_less_a_tolerance():
    assert calibrate([BOXES, BOXES], [BOXES, BOXES[:2]]) == pytest.approx(0.8 - 0.1)
    with pytest.raises(ValueError):
        calibrate([BOXES], [])
