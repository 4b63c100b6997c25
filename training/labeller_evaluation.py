"""How good a labeller (any YOLO ONNX file) is on a labelled YOLO folder: COCO mAP50 and
mAP50-95 via pycocotools, precision and recall, measured through the same onnxruntime pipeline
the service labels with (`service.core.labeller_session`)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from service.core.datasets import coco_json, image_files, read_image
from service.core.labeller_session import Detections, LabellerSession
from service.core.repository import LABELLER, LABELLER_FILE, ModelRepository
from service.core.yolo import label_path, read_rows, xyxy


def ground_truth(
    data: Path, files: list[Path], shapes: list[tuple[int, int]]
) -> list[Detections]:
    """The YOLO labels of image `files` in the folder `data` as pixel boxes (confidence 1)."""
    truth = []
    for file, (h, w) in zip(files, shapes, strict=True):
        path = label_path(data, file)
        rows = read_rows(path, missing_ok=True)
        boxes = xyxy(rows, (h, w)).astype(np.float32)
        truth.append(Detections(boxes, rows[:, 0].astype(np.int64),
                                np.ones(len(rows), np.float32), (h, w)))
    return truth


def _match_counts(
    truth: list[Detections], found: list[Detections], iou: float = 0.5
) -> tuple[int, int, int]:
    """True positives, detections and ground-truth boxes at one IoU, same class, greedy by conf."""
    tp = n_found = n_truth = 0
    for t, d in zip(truth, found, strict=True):
        n_found, n_truth = n_found + len(d), n_truth + len(t)
        used = np.zeros(len(t), bool)
        for i in np.argsort(-d.conf, kind="stable"):
            if not len(t):
                break
            x1 = np.maximum(d.boxes[i, 0], t.boxes[:, 0])
            y1 = np.maximum(d.boxes[i, 1], t.boxes[:, 1])
            x2 = np.minimum(d.boxes[i, 2], t.boxes[:, 2])
            y2 = np.minimum(d.boxes[i, 3], t.boxes[:, 3])
            inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)
            area_d = (d.boxes[i, 2] - d.boxes[i, 0]) * (d.boxes[i, 3] - d.boxes[i, 1])
            area_t = (t.boxes[:, 2] - t.boxes[:, 0]) * (t.boxes[:, 3] - t.boxes[:, 1])
            ious = inter / (area_d + area_t - inter + 1e-9)
            ious = np.where((t.cls == d.cls[i]) & ~used, ious, 0)
            j = int(np.argmax(ious))
            if ious[j] >= iou:
                used[j], tp = True, tp + 1
    return tp, n_found, n_truth


def coco_map(
    truth: list[Detections], found: list[Detections], names: list[str]
) -> tuple[float, float]:
    """COCO mAP50 and mAP50-95 (101-point interpolation) with pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not any(len(d) for d in found):
        return 0.0, 0.0
    file_names = [str(i) for i in range(len(truth))]
    gt = COCO()
    gt.dataset = coco_json(file_names, truth, names)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        gt.createIndex()
        dets = coco_json(file_names, found, names)["annotations"]
        evaluation = COCOeval(gt, gt.loadRes(dets), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[1]), float(evaluation.stats[0])


def evaluate_onnx(
    onnx_path: Path, names: list[str], imgsz: int, data: Path, conf: float = 0.25
) -> dict[str, float]:
    """mAP50, mAP50-95 (all boxes above conf 0.001, as Ultralytics validates) and precision,
    recall at IoU 0.5 for boxes above `conf`, of an ONNX labeller on a YOLO folder."""
    data = Path(data)
    if not (data / "images").is_dir():
        raise FileNotFoundError(f"{data} is not a YOLO-layout folder: {data / 'images'} is missing")
    files = image_files(data / "images", recursive=True)
    images = [read_image(f) for f in files]
    truth = ground_truth(data, files, [im.shape[:2] for im in images])
    session = LabellerSession(onnx_path, names, imgsz, conf=0.001, iou=0.7)
    found = session.label(images)
    map50, map50_95 = coco_map(truth, found, names)
    confident = [Detections(d.boxes[d.conf > conf], d.cls[d.conf > conf], d.conf[d.conf > conf],
                            d.shape) for d in found]
    tp, n_found, n_truth = _match_counts(truth, confident)
    return {"mAP50": map50, "mAP50_95": map50_95,
            "precision": tp / n_found if n_found else 0.0,
            "recall": tp / n_truth if n_truth else 0.0,
            "images": len(images), "objects": n_truth}


def evaluate_labeller(models: Path, data: Path, version: int | None = None) -> dict[str, float]:
    """Measure the published labeller on the YOLO folder `data` (see `evaluate_onnx`)."""
    session = LabellerSession.from_repository(models, version)  # clear ModelNotFound if absent
    entry = ModelRepository(models).resolve(LABELLER, version)
    return evaluate_onnx(entry.file(LABELLER_FILE), session.classes, session.imgsz, Path(data))
