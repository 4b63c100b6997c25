"""The YOLO labeller, run with onnxruntime only: letterbox, batched inference, decode, NMS.

The labeller is an Ultralytics YOLO (anchor-free v5u/v8 head) exported to ONNX: input
`images` [N, 3, S, S] RGB in [0, 1], output [N, 4 + nc, anchors] holding box centre, width
and height in input pixels followed by one score per class (no objectness). Pre- and
post-processing copy Ultralytics 8.4 step for step (`LetterBox`, `non_max_suppression`,
`scale_boxes`), so boxes agree with `YOLO(weights).predict` on the same weights; serving
never needs torch or Ultralytics.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from service.core.cards import LabellerCard
from service.core.onnx_session import open_session
from service.core.repository import LABELLER, LABELLER_FILE, ModelNotFound, ModelRepository

PAD_VALUE = 114  # Ultralytics' letterbox grey
MAX_WH = 7680  # class offset for class-aware NMS, as in Ultralytics
MAX_NMS = 30000  # boxes kept before NMS, as in Ultralytics


@dataclass(frozen=True)
class Detections:
    """Boxes found in one image, in pixels of that image."""

    boxes: np.ndarray  # [k, 4] float32 x1, y1, x2, y2
    cls: np.ndarray  # [k] int64 class index
    conf: np.ndarray  # [k] float32 confidence
    shape: tuple[int, int]  # (height, width) of the image

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32),
                   shape)

    def __len__(self) -> int:
        return len(self.cls)

    def yolo_rows(self) -> np.ndarray:
        """YOLO label rows: class, centre x, centre y, width, height, normalised.  # [k, 5]"""
        h, w = self.shape
        x1, y1, x2, y2 = self.boxes.T.astype(np.float64)
        return np.stack(
            [self.cls.astype(np.float64), (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w,
             (y2 - y1) / h], axis=1,
        ).reshape(-1, 5)


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """Resize keeping aspect ratio and pad to `size`×`size`, centred, like Ultralytics."""
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    if (w, h) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT,
                              value=(PAD_VALUE,) * 3)


def scale_boxes(boxes: np.ndarray, size: int, shape: tuple[int, int]) -> np.ndarray:
    """Boxes in letterboxed `size`² pixels back to the original image `shape`, clipped."""
    h, w = shape
    gain = min(size / h, size / w)
    new_h, new_w = max(round(h * gain), 1), max(round(w * gain), 1)
    pad_x, pad_y = round((size - new_w) / 2 - 0.1), round((size - new_h) / 2 - 0.1)
    boxes = boxes.copy()
    boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - pad_x) / (new_w / w)).clip(0, w)
    boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - pad_y) / (new_h / h)).clip(0, h)
    return boxes


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS, best score first (what `torchvision.ops.nms` returns)."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        ih = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = iw * ih
        order = rest[inter / (areas[i] + areas[rest] - inter + 1e-9) <= iou]
    return np.array(keep, dtype=np.int64)


def decode(
    output: np.ndarray, conf: float, iou: float, max_det: int = 300
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw head output [4 + nc, anchors] to (xyxy, cls, conf) after class-aware NMS."""
    pred = output.T  # [anchors, 4 + nc]
    scores = pred[:, 4:]
    best = scores.max(1)
    pred, scores, best = pred[best > conf], scores[best > conf], best[best > conf]
    cls = scores.argmax(1)
    if len(best) > MAX_NMS:
        top = np.argsort(-best, kind="stable")[:MAX_NMS]
        pred, cls, best = pred[top], cls[top], best[top]
    cx, cy, w, h = pred[:, :4].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    keep = nms(boxes + cls[:, None] * MAX_WH, best, iou)[:max_det]  # offset: no cross-class NMS
    return boxes[keep], cls[keep].astype(np.int64), best[keep].astype(np.float32)


def _as_rgb(image: np.ndarray, index: int) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image {index} has dtype {image.dtype}; the labeller takes uint8 images")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or 0 in image.shape:
        raise ValueError(f"image {index} has shape {image.shape}; expected HxWx3 (RGB)")
    return np.ascontiguousarray(image[..., :3])


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata_props Ultralytics writes into an exported ONNX file (names, imgsz, ...)."""
    session = open_session(path)
    return dict(session.get_modelmeta().custom_metadata_map)


class LabellerSession:
    """A labeller ONNX file; `label(images)` gives one `Detections` per image.

    `classes` and `imgsz` default to what Ultralytics stored in the ONNX metadata.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        classes: list[str] | None = None,
        imgsz: int | None = None,
        conf: float = 0.25,
        iou: float = 0.45,
        batch_size: int = 16,
        max_det: int = 300,
    ):
        if not Path(path).is_file():
            raise FileNotFoundError(f"labeller model {path} does not exist")
        self.session = open_session(path)
        meta = self.session.get_modelmeta().custom_metadata_map
        if classes is None:
            names = ast.literal_eval(meta.get("names", "{}"))  # Ultralytics writes a dict repr
            classes = [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)
        if imgsz is None:
            imgsz = int(ast.literal_eval(meta.get("imgsz", "[640, 640]"))[0])
        self.classes = list(classes)
        self.imgsz = int(imgsz)
        self.conf, self.iou, self.batch_size, self.max_det = conf, iou, batch_size, max_det
        self.input_name = self.session.get_inputs()[0].name
        n_out = self.session.get_outputs()[0].shape[1]
        if isinstance(n_out, int) and n_out != 4 + len(self.classes):
            raise ValueError(
                f"labeller {path} outputs {n_out - 4} classes but {len(self.classes)} are named"
            )

    @classmethod
    def from_repository(
        cls, models: str | os.PathLike[str], version: int | None = None, **kwargs: Any
    ) -> LabellerSession:
        """The published labeller (newest unless `version` is given) with its card's settings."""
        try:
            entry = ModelRepository(models).resolve(LABELLER, version)
        except ModelNotFound as e:
            raise ModelNotFound(
                f"{e}; train and publish one with `boxgen train-labeller --models {models}`"
            ) from None
        card = entry.read_card(LabellerCard)
        return cls(entry.file(LABELLER_FILE), classes=card.classes, imgsz=card.imgsz, **kwargs)

    def label(self, images: list[np.ndarray] | np.ndarray) -> list[Detections]:
        """Detections for RGB uint8 images (a list of HxWx3 arrays, or one NxHxWx3 array)."""
        rgb = [_as_rgb(image, i) for i, image in enumerate(images)]
        results: list[Detections] = []
        for start in range(0, len(rgb), self.batch_size):
            chunk = rgb[start : start + self.batch_size]
            batch = np.stack([letterbox(image, self.imgsz) for image in chunk])  # [n, S, S, 3]
            x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
            output = self.session.run(None, {self.input_name: x})[0]  # [n, 4 + nc, anchors]
            for image, out in zip(chunk, output, strict=True):
                boxes, cls, conf = decode(out, self.conf, self.iou, self.max_det)
                shape = image.shape[:2]
                results.append(Detections(scale_boxes(boxes, self.imgsz, shape).astype(np.float32),
                                          cls, conf, shape))
        return results
