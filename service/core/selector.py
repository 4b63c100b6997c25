"""Automatic selection of generated bin images: novelty, quality and the thesis' four categories.

The thesis judged generated images by eye as green (new and good), yellow (new, borderline),
white (partial or broken objects) and red (copies of training images). A `Selector` computes
these categories from two measurements, both calibrated on the fine-tune's own real images:
novelty (`service.core.novelty`) and quality (`service.core.quality`).

Two more measurements, also calibrated on the real images, make an image white: fidelity
(`service.core.fidelity`: smeared or checkered images, or colours the photos never show,
whatever made them), and, for an
image built with labels (the compose recipe), label agreement (`service.core.agreement`: the
labeller must find what the labels say).

Categories: red if novelty < 1; else white if an object looks partial, nothing is found,
quality < `WHITE_BELOW`, fidelity < `FIDELITY_WHITE_BELOW` or the labels disagree; else green
if quality >= `GREEN_FROM`; else yellow.

Sampling until enough images pass is `service.core.sampling`. Numpy only: the service
imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from service.core.agreement import agreement, calibrate
from service.core.fidelity import FIDELITY_WHITE_BELOW, FidelityCalibration
from service.core.novelty import (
    COPY_FRACTION,
    FEATURE_SIDE,
    WORK_SIDE,
    distances,
    leave_one_out,
    novelty_features,
    shifted_features,
)
from service.core.quality import (
    CONTAINED,
    HIDDEN_OVERLAP,
    HIDDEN_SHOWN,
    PARTIAL_BELOW,
    REAL_PASS,
    SHAPE_TOLERANCE,
    DetectionsLike,
    QualityCalibration,
    products,
)
from service.core.repository import SELECTION_FILE

GREEN_FROM = 0.8  # quality at or above: green (when novel)
WHITE_BELOW = 0.35  # quality below: white (broken)
CATEGORIES = ("green", "yellow", "white", "red")
SelectMode = Literal["green", "yellow", "none"]  # which samples /generate may return
SELECT_MODES: tuple[str, ...] = get_args(SelectMode)


@dataclass(frozen=True)
class ImageScore:
    """One image's verdict.

    novelty: distance to the nearest training image divided by the copy threshold (< 1: copy).
    nearest: index of that training image. quality: 0..1 from the labeller (1: like the real
    images). category: green | yellow | white | red. reason: why, in words.
    """

    novelty: float
    nearest: int
    quality: float
    category: str
    objects: int
    reason: str
    fidelity: float | None = None  # 0..1, 1: as sharp, clean and true to colour as the photos
    agreement: float | None = None  # F1 of the labeller's boxes against the image's labels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Selector:
    """Scores generated images against the fine-tune's training images."""

    def __init__(self, reference: np.ndarray, copy_threshold: float, loo: np.ndarray,
                 quality: QualityCalibration | None,
                 fidelity: FidelityCalibration | None = None,
                 agreement_min: float | None = None):
        self.reference = reference.astype(np.float32)  # [M, 9, D] shifted training features
        self.copy_threshold = float(copy_threshold)
        self.loo = np.asarray(loo, np.float32)  # [M] leave-one-out distances (for the card)
        self.quality = quality
        self.fidelity = fidelity  # None: selections published before fidelity existed
        self.agreement_min = agreement_min  # None: calibrated without the photos' labels

    @classmethod
    def fit(cls, train_images: np.ndarray | Sequence[np.ndarray],
            train_detections: Sequence[DetectionsLike] | None = None,
            train_labels: Sequence[np.ndarray] | None = None) -> Selector:
        """Calibrate on the training images (uint8 [N, H, W, 3], N >= 2), the labeller's
        detections on them and their labels (pixel boxes x1 y1 x2 y2 [k, 4] per image).

        Without detections, quality is not measured (1); without labels, agreement is not.
        """
        if len(train_images) < 2:
            raise ValueError(f"need at least 2 training images to calibrate novelty, got "
                             f"{len(train_images)}")
        reference = shifted_features(train_images)
        loo = leave_one_out(reference)
        threshold = COPY_FRACTION * float(np.median(loo))
        if threshold <= 0:
            raise ValueError("training images contain duplicates only (every image has an exact "
                             "twin), so no copy threshold can be calibrated")
        quality = None
        if train_detections is not None:
            if len(train_detections) != len(train_images):
                raise ValueError(f"{len(train_detections)} detections for {len(train_images)} "
                                 "training images")
            sizes = [np.asarray(im).shape[:2] for im in train_images]
            quality = QualityCalibration.fit(train_detections, sizes)
        agreement_min = None
        if train_detections is not None and train_labels is not None:
            agreement_min = calibrate(train_labels, [d.boxes for d in train_detections],
                                      [parts(d) for d in train_detections])
        return cls(reference, threshold, loo, quality, FidelityCalibration.fit(train_images),
                   agreement_min)

    def novelty(self, images: np.ndarray | Sequence[np.ndarray],
                features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(novelty [N], nearest training index [N]) for uint8 images (`features`: their
        `novelty_features`, when the caller has them already)."""
        if len(images) == 0:
            return np.zeros(0), np.zeros(0, np.int64)
        d = distances(novelty_features(images) if features is None else features, self.reference)
        return d.min(1) / self.copy_threshold, d.argmin(1)

    def score(self, images: np.ndarray | Sequence[np.ndarray],
              detections: Sequence[DetectionsLike] | None = None,
              labels: Sequence[np.ndarray] | None = None,
              features: np.ndarray | None = None,
              foreign: Sequence[np.ndarray] | None = None) -> list[ImageScore]:
        """Category and measures for each image; `detections` from the labeller and `labels`
        (pixel boxes the image was built with, compose only), one per image; `features` as
        in `novelty`; `foreign`: per image, which labels ([k] bool) are other SKUs' products
        (distractors), left out of quality and palette, which know the SKU's own only, but
        not out of agreement: the labeller must find them too."""
        for given, name in ((detections, "detections"), (labels, "labels"),
                            (foreign, "foreign")):
            if given is not None and len(given) != len(images):
                raise ValueError(f"{len(given)} {name} for {len(images)} images")
        others = [None] * len(images)
        if labels is not None and foreign is not None:
            others = [np.asarray(b).reshape(-1, 4)[np.asarray(f, bool)]
                      for b, f in zip(labels, foreign, strict=True)]
        novelty, nearest = self.novelty(images, features)
        fidelity = self.fidelity.score(images, others) \
            if self.fidelity is not None and len(images) else [None] * len(images)
        scores = []
        for i, image in enumerate(images):
            det = detections[i] if detections is not None else None
            if self.quality is None or det is None:
                quality, partial, why = 1.0, False, "quality not measured"
            else:
                quality, partial, why = self.quality.score(det, np.asarray(image).shape[:2],
                                                           others[i])
            agrees = None
            if labels is not None and det is not None and self.agreement_min is not None:
                agrees = agreement(labels[i], det.boxes, parts(det))
            if novelty[i] < 1:
                category, why = "red", f"copy of training image {int(nearest[i])}"
            elif fidelity[i] is not None and fidelity[i] < FIDELITY_WHITE_BELOW:
                category = "white"
                why = f"fidelity {fidelity[i]:.2f}: smeared, artefacts or alien colours"
            elif agrees is not None and agrees < self.agreement_min:
                category = "white"
                why = f"labeller disagrees with the labels (F1 {agrees:.2f})"
            elif partial or quality < WHITE_BELOW:
                category = "white"
            elif quality >= GREEN_FROM:
                category = "green"
            else:
                category = "yellow"
            scores.append(ImageScore(
                round(float(novelty[i]), 4), int(nearest[i]), round(quality, 4), category,
                len(det.conf) if det is not None else -1, why,
                None if fidelity[i] is None else round(float(fidelity[i]), 4),
                None if agrees is None else round(agrees, 4)))
        return scores

    def describe(self) -> dict[str, Any]:
        """Thresholds and how they were calibrated, JSON-able (for cards and reports)."""
        return {
            "file": SELECTION_FILE,
            "novelty": {
                "feature": f"{WORK_SIDE}px squash, {FEATURE_SIDE}x{FEATURE_SIDE} per-channel "
                           "standardised, L2 min over +-1px shifts",
                "copy_threshold": self.copy_threshold,
                "rule": f"{COPY_FRACTION} x median leave-one-out distance between training "
                        "images (novelty = distance / threshold; < 1 is a copy)",
                "train_images": len(self.reference),
                "leave_one_out": {"min": float(self.loo.min()),
                                  "median": float(np.median(self.loo)),
                                  "max": float(self.loo.max())},
            },
            "quality": None if self.quality is None else {
                **self.quality.to_dict(),
                "rule": f"per product (a box {CONTAINED:.0%} or more inside a larger one is a "
                        f"part, not a product) min(conf / ref, 1) x box-shape score (long and "
                        f"short side within the real range +-{SHAPE_TOLERANCE} of the class "
                        f"the box fits best; {HIDDEN_SHOWN:.0%} of the real minimum for a box "
                        f"overlapping another by {HIDDEN_OVERLAP:.0%} or more); ref: the least "
                        f"sure of the read class and the classes the box fits, each the "
                        f"quantile of the photos' confidences that a real bin of their typical "
                        f"count passes whole {REAL_PASS:.0%} of the times; image = count score "
                        "x weakest product",
            },
            "fidelity": None if self.fidelity is None else {
                **self.fidelity.to_dict(), "white_below": FIDELITY_WHITE_BELOW},
            "agreement": None if self.agreement_min is None else {
                "min_f1": self.agreement_min,
                "rule": "F1 of the labeller's boxes against the image's labels (IoU >= 0.5, "
                        f"class ignored; a box {CONTAINED:.0%} or more inside a larger one, "
                        "left over, is a part, not a product too many) >= the photos' lowest "
                        "- 0.1"},
            "categories": {"red": "novelty < 1",
                           "white": f"fidelity < {FIDELITY_WHITE_BELOW}, labels disagree, "
                                    f"partial object (shape score < {PARTIAL_BELOW}), no "
                                    f"objects, or quality < {WHITE_BELOW}",
                           "green": f"quality >= {GREEN_FROM}", "yellow": "otherwise"},
        }

    def save(self, folder: str | Path) -> dict[str, Any]:
        """Write `selection.npz` into `folder`; return the card section describing it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / SELECTION_FILE, reference=self.reference.astype(np.float16),
                            loo=self.loo)
        return self.describe()

    @classmethod
    def load(cls, folder: str | Path, card_section: dict[str, Any]) -> Selector:
        """The selector `save` wrote into `folder`, with the card section it returned."""
        path = Path(folder) / card_section.get("file", SELECTION_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"selector arrays {path} do not exist")
        with np.load(path) as arrays:
            reference, loo = arrays["reference"].astype(np.float32), arrays["loo"]
        quality, fidelity = card_section.get("quality"), card_section.get("fidelity")
        agreement_min = (card_section.get("agreement") or {}).get("min_f1")
        return cls(reference, card_section["novelty"]["copy_threshold"], loo,
                   QualityCalibration.from_dict(quality) if quality else None,
                   FidelityCalibration.from_dict(
                       {k: v for k, v in fidelity.items() if k != "white_below"})
                   if fidelity else None,
                   agreement_min)


def parts(det: DetectionsLike) -> np.ndarray:
    """Which of the labeller's boxes lie inside a larger one (`quality.products`).  # [k]"""
    out = np.ones(len(det.conf), bool)
    out[products(det).index] = False
    return out


def category_fractions(scores: Sequence[ImageScore]) -> dict[str, float]:
    """Fraction of images per category, like the thesis' Table 4.1."""
    n = max(len(scores), 1)
    return {c: sum(s.category == c for s in scores) / n for c in CATEGORIES}


def passes(score: ImageScore, select: str) -> bool:
    """Whether an image passes `select` (green: green only; yellow: green or yellow; none)."""
    if select not in SELECT_MODES:
        raise ValueError(f"select must be one of {', '.join(SELECT_MODES)}, got {select!r}")
    return select == "none" or score.category == "green" or (
        select == "yellow" and score.category == "yellow")
