"""service/core/labeller_session.py: the onnxruntime pipeline against Ultralytics itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.datasets import image_files, read_image
from service.core.labeller_session import Detections, LabellerSession, letterbox, nms, scale_boxes
from service.core.repository import ModelNotFound
from tests.labeller_fixtures import IMGSZ, TrainedLabeller, trained_labeller
from training.render import CLASSES, write_corpus
from training.ultralytics_setup import import_ultralytics

CONF, IOU = 0.01, 0.45  # the fixture labeller is barely trained: low confidences
MARGIN = 0.002


@pytest.fixture(scope="session")
def labeller() -> TrainedLabeller:
    return trained_labeller()


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` with every box in `b`.  # [len(a), len(b)]"""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(2)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _assert_same(ours: Detections, boxes: np.ndarray, cls: np.ndarray, conf: np.ndarray) -> int:
    """Every confident box on one side has a same-class twin (IoU >= 0.9) on the other.

    Boxes within MARGIN of the threshold may fall either side of it from float rounding, so
    only boxes above threshold + MARGIN need a twin (among all the other side's boxes).
    """
    for a_box, a_cls, a_conf, b_box, b_cls, b_conf in (
        (ours.boxes, ours.cls, ours.conf, boxes, cls, conf),
        (boxes, cls, conf, ours.boxes, ours.cls, ours.conf),
    ):
        a_keep, b_keep = a_conf >= CONF + MARGIN, b_conf >= CONF
        if not a_keep.any():
            continue
        iou = _iou(a_box[a_keep], b_box[b_keep])
        same = a_cls[a_keep][:, None] == b_cls[b_keep][None, :]
        assert ((iou >= 0.9) & same).any(1).all(), (a_box[a_keep], b_box[b_keep])
    return int((ours.conf >= CONF + MARGIN).sum())


def _predict_ultralytics(model_path: Path, files: list[Path]) -> list:
    import_ultralytics()
    from ultralytics import YOLO

    model = YOLO(str(model_path), task="detect")
    return model.predict([str(f) for f in files], conf=CONF, iou=IOU, imgsz=IMGSZ,
                         device="cpu", verbose=False)


def test_labels_match_ultralytics_predict_on_same_weights(labeller: TrainedLabeller) -> None:
    files = image_files(labeller.heldout / "images")
    session = LabellerSession.from_repository(labeller.models, conf=CONF, iou=IOU)
    ours = session.label([read_image(f) for f in files])
    theirs = _predict_ultralytics(labeller.weights, files)  # the torch weights, not the ONNX
    compared = 0
    for det, result in zip(ours, theirs, strict=True):
        b = result.boxes
        compared += _assert_same(det, b.xyxy.numpy(), b.cls.numpy().astype(int), b.conf.numpy())
    assert compared >= 5, "too few boxes to compare; train the fixture labeller longer"


def test_non_square_images_match_ultralytics(labeller: TrainedLabeller, tmp_path: Path) -> None:
    """Letterbox padding and box rescaling on 96×64 and 64×96 images."""
    files = []
    for size in ((96, 64), (64, 96)):
        out = write_corpus(tmp_path / f"{size[0]}x{size[1]}", groups=1, per_group=3, size=size,
                           first_group=4)
        files += image_files(out / "images")
    session = LabellerSession.from_repository(labeller.models, conf=CONF, iou=IOU)
    ours = session.label([read_image(f) for f in files])
    theirs = _predict_ultralytics(labeller.version.file("labeller.onnx"), files)
    for det, result, f in zip(ours, theirs, files, strict=True):
        assert det.shape == read_image(f).shape[:2]
        b = result.boxes
        _assert_same(det, b.xyxy.numpy(), b.cls.numpy().astype(int), b.conf.numpy())


def test_session_reads_classes_and_size_from_onnx(labeller: TrainedLabeller) -> None:
    session = LabellerSession(labeller.version.file("labeller.onnx"))
    assert session.classes == list(CLASSES) and session.imgsz == IMGSZ


def test_batched_equals_one_by_one(labeller: TrainedLabeller) -> None:
    images = np.stack([read_image(f) for f in image_files(labeller.heldout / "images")])
    session = LabellerSession.from_repository(labeller.models, conf=CONF, batch_size=3)
    batched = session.label(images)  # one NHWC array, in chunks of 3
    for image, det in zip(images, batched, strict=True):
        single = session.label([image])[0]
        np.testing.assert_allclose(single.boxes, det.boxes, atol=1e-3)
        np.testing.assert_array_equal(single.cls, det.cls)


@pytest.mark.parametrize("shape", [(64, 64), (48, 100), (100, 37), (20, 20), (300, 64)])
def test_letterbox_and_scale_match_ultralytics(shape: tuple[int, int]) -> None:
    import_ultralytics()
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.ops import scale_boxes as ultralytics_scale_boxes

    image = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    expected = LetterBox(new_shape=(IMGSZ, IMGSZ), auto=False)(image=image)
    np.testing.assert_array_equal(letterbox(image, IMGSZ), expected)
    boxes = np.array([[0, 0, 64, 64], [5.5, 10, 30, 40], [30, 2, 70, 63]], np.float32)
    import torch

    want = ultralytics_scale_boxes((IMGSZ, IMGSZ), torch.tensor(boxes), shape).numpy()
    np.testing.assert_allclose(scale_boxes(boxes, IMGSZ, shape), want, atol=1e-4)


def test_nms_matches_torchvision() -> None:
    import torch
    import torchvision

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 50, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (200, 2))], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 200).astype(np.float32)
    want = torchvision.ops.nms(torch.tensor(boxes), torch.tensor(scores), 0.45).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, 0.45), want)


def test_yolo_rows_normalise_to_image_size() -> None:
    det = Detections(np.array([[10, 20, 30, 60]], np.float32), np.array([2]),
                     np.array([0.9], np.float32), (80, 40))
    np.testing.assert_allclose(det.yolo_rows(), [[2, 0.5, 0.5, 0.5, 0.5]])
    assert Detections.empty((8, 8)).yolo_rows().shape == (0, 5)


def test_bad_input_gives_clear_errors(labeller: TrainedLabeller, tmp_path: Path) -> None:
    session = LabellerSession.from_repository(labeller.models)
    with pytest.raises(ValueError, match="uint8"):
        session.label([np.zeros((64, 64, 3), np.float32)])
    with pytest.raises(ValueError, match="HxWx3"):
        session.label([np.zeros((64, 64, 5), np.uint8)])
    with pytest.raises(ModelNotFound, match="no model '_labeller'.*train-labeller"):
        LabellerSession.from_repository(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LabellerSession(tmp_path / "missing.onnx")
