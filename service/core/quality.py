"""Quality of a generated bin image, from the labeller's detections on it.

Quality (0..1) comes from the labeller's detections, compared with its detections on the real
images: per object, confidence relative to the real images' typical confidence, and box shape
(long and short side) within the range of boxes of that class on the real images (a product cut
in half has a box too short on one side); per image, the object count within the real range.
See `QualityCalibration`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from service.core.agreement import MATCH_IOU, iou_matrix

PARTIAL_BELOW = 0.5  # an object whose shape score is below this looks partial
SHAPE_TOLERANCE = 0.15  # boxes may be this fraction outside the real range before losing score
# An image is as good as its weakest object, so each object's reference confidence is the
# quantile of the real detections that a real image of the photos' typical count passes
# whole this often: 1 - REAL_PASS ** (1 / count), 5 % for one product, 1 % for five. A fixed
# 10 % quantile called only 77 % of held-out real bins of five products green (90 % now).
REAL_PASS = 0.95
# A box lying this much inside a larger one is the labeller seeing a part of that product (a
# label, a cap), not a product of its own: NMS is per class and keeps a small box of another
# class, or of the same class, inside a large one. Measured on held-out real bins of 8 products:
# 14 of the 15 objects judged partial overlapped another box, most of them from within.
CONTAINED = 0.7
# A product whose box shares at least HIDDEN_OVERLAP of its area with another may lie partly
# under it (cluttered bins): its sides are held to HIDDEN_SHOWN of the real minimum. Measured
# on held-out real bins of 8 products: 7 % -> 3 % judged partial; a cut product lying alone
# stays partial.
HIDDEN_OVERLAP, HIDDEN_SHOWN = 0.05, 0.65
# Objects beyond the fullest real image that cost nothing: a new arrangement may hold one more
# product than the ten photos happened to show (compose's sampler adds up to this many).
EXTRA_OBJECTS = 1


class DetectionsLike(Protocol):
    """What the selector reads from `service.core.labeller_session.Detections`."""

    boxes: np.ndarray  # [k, 4] x1, y1, x2, y2 pixels
    cls: np.ndarray  # [k]
    conf: np.ndarray  # [k]


@dataclass(frozen=True)
class Products:
    """Detections that are products of their own (see `products`)."""

    boxes: np.ndarray
    cls: np.ndarray
    conf: np.ndarray
    index: np.ndarray  # each one's index among all the detections


def _overlap(boxes: np.ndarray) -> np.ndarray:
    """[i, j]: the fraction of box i's area inside box j, 0 on the diagonal.  # [k, k]"""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    x1 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y1 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x2 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y2 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inside = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None) / np.maximum(area[:, None],
                                                                                  1e-9)
    np.fill_diagonal(inside, 0)
    return inside


def products(det: DetectionsLike) -> Products:
    """`det` without the boxes that lie `CONTAINED` or more inside a larger box."""
    boxes = np.asarray(det.boxes, np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = _overlap(boxes)
    inside[area[:, None] >= area[None, :]] = 0  # only inside a larger box
    keep = ~(inside >= CONTAINED).any(axis=1)
    return Products(boxes[keep], np.asarray(det.cls)[keep], np.asarray(det.conf)[keep],
                    np.nonzero(keep)[0])


@dataclass(frozen=True)
class QualityCalibration:
    """What the labeller sees on the real images; generated images are scored against it.

    conf_ref: the `conf_quantile(counts)` quantile of the real detections' confidences; an
        object at or above it scores 1, below it proportionally less.
    class_conf: the same quantile per class name (index as a string), used for objects of
        that class: the labeller is surer of some products than of others (a small tube
        among bottles sits near 0.3 on every real photo), and each is held to its own, or
        to that of a class whose shape the box fits, when that one is less sure.
    shapes: per class name (index as a string), the (min, max) of the long and of the short
        box side on the real images, as fractions of the image's short side; a box scores by
        the class it fits best. An object of a class never seen on the real images is not
        shape-checked. Boxes are axis-aligned, so a
        product's short side grows with its rotation (a bottle at 45° has a nearly square
        box) and ten photos rarely show every angle: the long side is checked against its
        range (rotation moves it little; a product cut across its length loses half), the short
        side only against its minimum (a round can cut in half) and the longest long side.
    count_range: (min, max) objects per real image; each object fewer costs half the score,
        each object more than `EXTRA_OBJECTS` beyond the max a quarter.
    """

    conf_ref: float = 0.5
    shapes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    count_range: tuple[int, int] = (1, 1_000)
    images: int = 0
    objects: int = 0
    class_conf: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, detections: Sequence[DetectionsLike],
            sizes: Sequence[tuple[int, int]]) -> QualityCalibration:
        """Calibrate on the real images' detections (`sizes`: each image's (H, W))."""
        detections = [products(d) for d in detections]
        confs = np.concatenate([np.asarray(d.conf, np.float64) for d in detections] or [[]])
        if len(confs) == 0:
            raise ValueError("the labeller found no objects on any training image, so quality "
                             "cannot be calibrated; check the labeller and the training images")
        per_class: dict[str, list[tuple[float, float]]] = {}
        class_confs: dict[str, list[float]] = {}
        for det, size in zip(detections, sizes, strict=True):
            for (c, long, short), conf in zip(_box_sides(det, size), det.conf, strict=True):
                per_class.setdefault(str(c), []).append((long, short))
                class_confs.setdefault(str(c), []).append(float(conf))
        shapes = {
            c: (float(min(v[0] for v in vs)), float(max(v[0] for v in vs)),
                float(min(v[1] for v in vs)), float(max(v[1] for v in vs)))
            for c, vs in sorted(per_class.items())
        }
        counts = [len(d.conf) for d in detections]
        q = conf_quantile(counts)
        class_conf = {c: float(np.quantile(v, q)) for c, v in sorted(class_confs.items())}
        return cls(float(np.quantile(confs, q)), shapes,
                   (int(min(counts)), int(max(counts))), len(detections), int(len(confs)),
                   class_conf)

    def object_scores(
        self, det: Products, size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per product (`products`): (confidence score, shape score), each in [0, 1]."""
        sides = _box_sides(det, size)
        refs = np.array([self.class_conf.get(str(c), self.conf_ref) for c, _, _ in sides])
        shape = np.ones(len(refs))
        hidden = _overlap(det.boxes).max(axis=1, initial=0) >= HIDDEN_OVERLAP
        for i, (c, long, short) in enumerate(sides):
            if str(c) not in self.shapes:
                continue
            # A weak labeller reads one product as another's class (a spray as a tube, at a
            # confidence the tube never has): the box is held to the product shape it fits
            # best, and its confidence to the least sure of the read class and the classes
            # whose shape it fits. Cluttered group 30: composites judged partial 21 % -> 4 %
            # and real bins 11 % -> 0 %; composites yellow 34 % -> 4 % and real bins
            # 23 % -> 7 %. The price: products of one shape share the least sure reference.
            fits = {}
            for name, (lo_l, hi_l, lo_s, _) in self.shapes.items():
                if hidden[i]:
                    lo_l, lo_s = lo_l * HIDDEN_SHOWN, lo_s * HIDDEN_SHOWN
                fits[name] = min(_range_score(long, lo_l, hi_l), _range_score(short, lo_s, hi_l))
            shape[i] = max(fits.values())
            refs[i] = min([refs[i]] + [self.class_conf.get(name, self.conf_ref)
                                       for name, fit in fits.items() if fit >= 1])
        conf = np.clip(np.asarray(det.conf, np.float64) / np.maximum(refs, 1e-6), 0, 1)
        return conf, shape

    def score(self, det: DetectionsLike, size: tuple[int, int],
              foreign: np.ndarray | None = None) -> tuple[float, bool, str]:
        """(quality in [0, 1], looks partial, reason) for one image's detections.

        `foreign`: boxes [m, 4] of other SKUs' products the image holds (compose's
        distractors); the detections that match one (IoU >= `MATCH_IOU`) are not judged, as
        the calibration knows only the SKU's own products. Each may take a product's place
        (the bin is not short of products), but never counts as one more of the SKU's, and
        it is a neighbour that may hide part of a product."""
        det = products(det)
        held = len(det.conf)
        conf, shape = self.object_scores(det, size)
        if foreign is not None and len(foreign) and held:
            own = iou_matrix(det.boxes, foreign).max(axis=1) < MATCH_IOU
            det = Products(det.boxes[own], det.cls[own], det.conf[own], det.index[own])
            conf, shape = conf[own], shape[own]
        if len(det.conf) == 0:
            return 0.0, True, "no objects found"
        lo, hi = self.count_range
        k = len(conf)
        # Fewer objects than any real image means objects the labeller cannot recognise
        # (broken or cut): half the score per missing one. One more than the fullest photo is
        # a new arrangement (measured: a single-product SKU's composites of two products were
        # 35 % of its samples, all yellow for the count alone); each further one costs a quarter.
        count = max(0.0, 1 - 0.5 * max(lo - held, 0) - 0.25 * max(k - hi - EXTRA_OBJECTS, 0))
        per_object = conf * shape
        quality = float(count * per_object.min())
        worst = int(per_object.argmin())
        if shape.min() < PARTIAL_BELOW:
            return quality, True, (f"object {int(det.index[shape.argmin()])} looks partial "
                                   "(box shape)")
        if count < 1:
            others = f" and {held - k} of other SKUs" if held > k else ""
            return quality, False, (f"{k} objects{others}, real images have {lo}-{hi} (and "
                                    f"{EXTRA_OBJECTS} more is new)")
        return quality, False, (f"weakest object {int(det.index[worst])}: confidence "
                                f"{float(det.conf[worst]):.2f}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> QualityCalibration:
        return cls(float(values["conf_ref"]),
                   {k: tuple(v) for k, v in values["shapes"].items()},
                   tuple(values["count_range"]), int(values.get("images", 0)),
                   int(values.get("objects", 0)),
                   {k: float(v) for k, v in values.get("class_conf", {}).items()})


def conf_quantile(counts: Sequence[int]) -> float:
    """The quantile of real confidences an object is held to, for photos of these object
    counts (see `REAL_PASS`)."""
    typical = max(float(np.median(counts)), 1.0)
    return 1 - REAL_PASS ** (1 / typical)


def _box_sides(det: DetectionsLike, size: tuple[int, int]) -> list[tuple[int, float, float]]:
    """(class, long side, short side) per box, sides as fractions of the image's short side."""
    scale = float(min(size))
    boxes = np.asarray(det.boxes, np.float64).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return [(int(c), max(a, b) / scale, min(a, b) / scale)
            for c, a, b in zip(np.asarray(det.cls), w, h, strict=True)]


def _range_score(value: float, lo: float, hi: float) -> float:
    """1 inside [lo, hi] widened by SHAPE_TOLERANCE, falling linearly to 0 one tolerance later."""
    lo_ok, hi_ok = lo * (1 - SHAPE_TOLERANCE), hi * (1 + SHAPE_TOLERANCE)
    if value < lo_ok:
        return max(0.0, 1 - (lo_ok - value) / (lo * SHAPE_TOLERANCE))
    if value > hi_ok:
        return max(0.0, 1 - (value - hi_ok) / (hi * SHAPE_TOLERANCE))
    return 1.0
