"""training/labeller_evaluation.py: COCO mAP of a labeller through the service's pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.labeller_session import Detections
from service.core.repository import ModelNotFound
from tests.labeller_fixtures import TrainedLabeller, trained_labeller
from training.labeller_evaluation import coco_map, evaluate_labeller


@pytest.fixture(scope="session")
def labeller() -> TrainedLabeller:
    return trained_labeller()


def test_evaluate_labeller_agrees_with_card(labeller: TrainedLabeller) -> None:
    result = evaluate_labeller(labeller.models, labeller.heldout)
    metrics = labeller.version.card["metrics"]
    assert result["mAP50"] == pytest.approx(metrics["heldout_mAP50"])
    assert result["images"] == 8 and result["objects"] > 0
    assert 0.0 <= result["precision"] <= 1.0 and 0.0 <= result["recall"] <= 1.0


def test_coco_map_is_one_for_perfect_and_zero_for_wrong_class() -> None:
    boxes = np.array([[2, 2, 20, 30], [30, 30, 60, 50]], np.float32)
    truth = [Detections(boxes, np.array([0, 1]), np.ones(2, np.float32), (64, 64))]
    perfect = [Detections(boxes, np.array([0, 1]), np.array([0.9, 0.8], np.float32), (64, 64))]
    wrong = [Detections(boxes, np.array([1, 0]), np.array([0.9, 0.8], np.float32), (64, 64))]
    assert coco_map(truth, perfect, ["a", "b"]) == pytest.approx((1.0, 1.0))
    assert coco_map(truth, wrong, ["a", "b"]) == pytest.approx((0.0, 0.0))


def test_evaluate_without_labeller_names_the_fix(tmp_path: Path, labeller: TrainedLabeller) -> None:
    with pytest.raises(ModelNotFound, match="train-labeller"):
        evaluate_labeller(tmp_path / "models", labeller.heldout)
