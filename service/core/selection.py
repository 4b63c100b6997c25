"""Automatic selection of generated bin images: novelty, quality and the thesis' four categories.

The thesis judged generated images by eye as green (new and good), yellow (new, borderline),
white (partial or broken objects) and red (copies of training images). A `Selector` computes
these categories from two measurements, both calibrated on the fine-tune's own real images:

Novelty: distance from an image to its nearest training image. Feature: the image squashed to
64×64, then averaged down to 12×12, each colour channel standardised (zero mean, unit variance),
flattened and scaled to unit RMS; distance is L2, minimised over ±1-pixel shifts (at 64 px) of
the training image. Standardising removes lighting and white balance (a copy under other light
is still a copy); the shift minimum absorbs the sub-object misplacement a memorising GAN makes.
Evidence, rendered corpus (`training.render`, 64×64, 8 groups × 40 images, 10 training images
per group; copies = a training image with ±1 px shift, blur σ 0.5-1, colour ±5 %, noise σ 5,
JPEG q50-90; distances divided by the median leave-one-out distance of the training set):

    feature                copies q99 / max   other arrangements q01 / q05
    pixels 16×16                0.65 / 0.70        0.65 / 0.84     (copies and others overlap)
    pixels 16×16 + shifts       0.44 (q95)         0.84 (q05)
    channel-std 16×16 + shifts  0.42 / 0.46        0.60 / 0.75
    channel-std 12×12 + shifts  0.35 / 0.37        0.59 / 0.77     <- chosen
    channel-std 8×8 + shifts    0.30 / 0.30        0.54 / 0.71
    (multi-scale SSIM, difference-of-Gaussians, a random numpy CNN, 32-64 px pixels: worse;
    without the shift minimum a 1-pixel shift alone moves a copy as far as a new arrangement.)

12×12 keeps the widest gap across 5, 10 and 20 training images (8×8 lets more real
arrangements fall under the threshold at 20; 16×16 lets blurrier copies over it).

Copy threshold: half the median leave-one-out distance (each training image to its nearest
*other* training image, i.e. to a different arrangement of the same products). On the corpus
above this marks 100 % of copies (also with twice the blur and more noise) and 0.4 % of
unseen real arrangements as copies (5-20 training images: at most 1.3 %). `novelty` is the
distance divided by this threshold: below 1 is a copy. The rule assumes few training images (the
fine-tune's ten): with hundreds, real arrangements crowd together and the threshold shrinks.

Quality (0..1) comes from the labeller's detections, compared with its detections on the real
images: per object, confidence relative to the real images' typical confidence, and box shape
(long and short side) within the range of boxes of that class on the real images (a product cut
in half has a box too short on one side); per image, the object count within the real range.
See `QualityCalibration`.

Categories: red if novelty < 1; else white if an object looks partial, nothing is found, or
quality < `WHITE_BELOW`; else green if quality >= `GREEN_FROM`; else yellow.

This module is numpy and Pillow only: the service imports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

WORK_SIDE = 64  # images are squashed to this square before shifting; one pixel = one shift step
FEATURE_SIDE = 12  # novelty feature grid (per channel)
SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
COPY_FRACTION = 0.5  # copy threshold = this × median leave-one-out distance
GREEN_FROM = 0.8  # quality at or above: green (when novel)
WHITE_BELOW = 0.35  # quality below: white (broken)
PARTIAL_BELOW = 0.5  # an object whose shape score is below this looks partial
SHAPE_TOLERANCE = 0.15  # boxes may be this fraction outside the real range before losing score
CONF_QUANTILE = 0.1  # reference confidence: this quantile of the real detections' confidences
CATEGORIES = ("green", "yellow", "white", "red")
SELECT_MODES = ("green", "yellow", "none")
ARRAYS_FILE = "selection.npz"


class DetectionsLike(Protocol):
    """What the selector reads from `service.core.labeller_session.Detections`."""

    boxes: np.ndarray  # [k, 4] x1, y1, x2, y2 pixels
    cls: np.ndarray  # [k]
    conf: np.ndarray  # [k]


# ----------------------------------------------------------------------------- novelty


def _squash(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Images to float RGB WORK_SIDE² in [0, 1].  # [N, 64, 64, 3]"""
    out = np.empty((len(images), WORK_SIDE, WORK_SIDE, 3), np.float32)
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] < 3:
            raise ValueError(f"image {i} has shape {image.shape} and dtype {image.dtype}; "
                             "expected uint8 HxWx3")
        pil = Image.fromarray(np.ascontiguousarray(image[..., :3]))
        if pil.size != (WORK_SIDE, WORK_SIDE):
            pil = pil.resize((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
        out[i] = np.asarray(pil, np.float32) / 255.0
    return out


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift [N, H, W, C] by whole pixels, repeating the edge (no wrap-around)."""
    if dy == 0 and dx == 0:
        return x
    h, w = x.shape[1:3]
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return p[:, 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def _grid_features(x: np.ndarray) -> np.ndarray:
    """[N, 64, 64, 3] -> channel-standardised 12×12 grids, unit RMS.  # [N, 432]"""
    n = len(x)
    # Area average to 12×12 with Pillow's BOX filter (64 is not a multiple of 12).
    small = np.stack([
        np.stack([np.asarray(Image.fromarray(x[i, :, :, c], mode="F").resize(
            (FEATURE_SIDE, FEATURE_SIDE), Image.Resampling.BOX)) for c in range(3)], -1)
        for i in range(n)
    ]).astype(np.float32) if n else np.zeros((0, FEATURE_SIDE, FEATURE_SIDE, 3), np.float32)
    small = small - small.mean((1, 2), keepdims=True)
    # 0.02: a flat channel (an empty, evenly lit image) stays flat instead of amplifying noise.
    small = small / np.maximum(small.std((1, 2), keepdims=True), 0.02)
    return small.reshape(n, -1) / math.sqrt(FEATURE_SIDE * FEATURE_SIDE * 3)


def novelty_features(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Novelty features of uint8 images (any size, squashed to a square).  # [N, D]"""
    return _grid_features(_squash(images))


def shifted_features(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Features of every ±1-pixel shift of each image (the training side).  # [N, 9, D]"""
    x = _squash(images)
    return np.stack([_grid_features(_shift(x, dy, dx)) for dy, dx in SHIFTS], axis=1)


def distances(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """L2 distance of each feature [N, D] to each reference image [M, S, D], min over shifts.

    Returns [N, M].
    """
    m, s, d = reference.shape
    flat = reference.reshape(m * s, d)
    sq = (features**2).sum(1)[:, None] + (flat**2).sum(1)[None] - 2 * features @ flat.T
    return np.sqrt(np.maximum(sq, 0)).reshape(len(features), m, s).min(2)


def leave_one_out(reference: np.ndarray) -> np.ndarray:
    """Each reference image's distance to its nearest *other* reference image.  # [M]"""
    d = distances(reference[:, SHIFTS.index((0, 0))], reference)
    np.fill_diagonal(d, np.inf)
    return d.min(1)


# ----------------------------------------------------------------------------- quality


@dataclass(frozen=True)
class QualityCalibration:
    """What the labeller sees on the real images; generated images are scored against it.

    conf_ref: the `CONF_QUANTILE` quantile of the real detections' confidences; an object at
        or above it scores 1, below it proportionally less.
    class_conf: the same quantile per class name (index as a string), used for objects of
        that class: the labeller is surer of some products than of others (a small tube
        among bottles sits near 0.3 on every real photo), and each is held to its own.
    shapes: per class name (index as a string), the (min, max) of the long and of the short
        box side on the real images, as fractions of the image's short side. An object of a
        class never seen on the real images is not shape-checked. Boxes are axis-aligned, so a
        product's short side grows with its rotation (a bottle at 45° has a nearly square
        box) and ten photos rarely show every angle: the long side is checked against its
        range (rotation moves it little; a product cut across its length loses half), the short
        side only against its minimum (a round can cut in half) and the longest long side.
    count_range: (min, max) objects per real image; each object fewer costs half the score,
        each object more a quarter.
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
        class_conf = {c: float(np.quantile(v, CONF_QUANTILE))
                      for c, v in sorted(class_confs.items())}
        return cls(float(np.quantile(confs, CONF_QUANTILE)), shapes,
                   (int(min(counts)), int(max(counts))), len(detections), int(len(confs)),
                   class_conf)

    def object_scores(
        self, det: DetectionsLike, size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per object: (confidence score, shape score), each in [0, 1]."""
        sides = _box_sides(det, size)
        refs = np.array([self.class_conf.get(str(c), self.conf_ref) for c, _, _ in sides])
        conf = np.clip(np.asarray(det.conf, np.float64) / np.maximum(refs, 1e-6), 0, 1)
        shape = np.ones(len(conf))
        for i, (c, long, short) in enumerate(sides):
            if str(c) in self.shapes:
                lo_l, hi_l, lo_s, _ = self.shapes[str(c)]
                shape[i] = min(_range_score(long, lo_l, hi_l), _range_score(short, lo_s, hi_l))
        return conf, shape

    def score(self, det: DetectionsLike, size: tuple[int, int]) -> tuple[float, bool, str]:
        """(quality in [0, 1], looks partial, reason) for one image's detections."""
        if len(det.conf) == 0:
            return 0.0, True, "no objects found"
        conf, shape = self.object_scores(det, size)
        lo, hi = self.count_range
        k = len(conf)
        # Fewer objects than any real image means objects the labeller cannot recognise
        # (broken or cut): half the score per missing one. An extra one costs a quarter.
        count = max(0.0, 1 - 0.5 * max(lo - k, 0) - 0.25 * max(k - hi, 0))
        per_object = conf * shape
        quality = float(count * per_object.min())
        worst = int(per_object.argmin())
        if shape.min() < PARTIAL_BELOW:
            return quality, True, f"object {int(shape.argmin())} looks partial (box shape)"
        if count < 1:
            return quality, False, f"{k} objects, real images have {lo}-{hi}"
        return quality, False, f"weakest object {worst}: confidence {float(det.conf[worst]):.2f}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> QualityCalibration:
        return cls(float(values["conf_ref"]),
                   {k: tuple(v) for k, v in values["shapes"].items()},
                   tuple(values["count_range"]), int(values.get("images", 0)),
                   int(values.get("objects", 0)),
                   {k: float(v) for k, v in values.get("class_conf", {}).items()})


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


# ----------------------------------------------------------------------------- selector


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Selector:
    """Scores generated images against the fine-tune's training images."""

    def __init__(self, reference: np.ndarray, copy_threshold: float, loo: np.ndarray,
                 quality: QualityCalibration | None):
        self.reference = reference.astype(np.float32)  # [M, 9, D] shifted training features
        self.copy_threshold = float(copy_threshold)
        self.loo = np.asarray(loo, np.float32)  # [M] leave-one-out distances (for the card)
        self.quality = quality

    @classmethod
    def fit(cls, train_images: np.ndarray | Sequence[np.ndarray],
            train_detections: Sequence[DetectionsLike] | None = None) -> Selector:
        """Calibrate on the training images (uint8 [N, H, W, 3], N >= 2) and their detections.

        Without detections, images are scored for novelty only (quality 1, never white).
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
        return cls(reference, threshold, loo, quality)

    def novelty(self, images: np.ndarray | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(novelty [N], nearest training index [N]) for uint8 images."""
        if len(images) == 0:
            return np.zeros(0), np.zeros(0, np.int64)
        d = distances(novelty_features(images), self.reference)
        return d.min(1) / self.copy_threshold, d.argmin(1)

    def score(self, images: np.ndarray | Sequence[np.ndarray],
              detections: Sequence[DetectionsLike] | None = None) -> list[ImageScore]:
        """Category and measures for each image; `detections` from the labeller, one per image."""
        if detections is not None and len(detections) != len(images):
            raise ValueError(f"{len(detections)} detections for {len(images)} images")
        novelty, nearest = self.novelty(images)
        scores = []
        for i, image in enumerate(images):
            det = detections[i] if detections is not None else None
            if self.quality is None or det is None:
                quality, partial, why = 1.0, False, "quality not measured"
            else:
                quality, partial, why = self.quality.score(det, np.asarray(image).shape[:2])
            if novelty[i] < 1:
                category, why = "red", f"copy of training image {int(nearest[i])}"
            elif partial or quality < WHITE_BELOW:
                category = "white"
            elif quality >= GREEN_FROM:
                category = "green"
            else:
                category = "yellow"
            scores.append(ImageScore(round(float(novelty[i]), 4), int(nearest[i]),
                                     round(quality, 4), category,
                                     len(det.conf) if det is not None else -1, why))
        return scores

    def describe(self) -> dict[str, Any]:
        """Thresholds and how they were calibrated, JSON-able (for cards and reports)."""
        return {
            "file": ARRAYS_FILE,
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
                "rule": f"per object min(conf / conf_ref, 1) x box-shape score (long and short "
                        f"side within the real range +-{SHAPE_TOLERANCE}); image = count score "
                        "x weakest object",
            },
            "categories": {"red": "novelty < 1",
                           "white": f"partial object (shape score < {PARTIAL_BELOW}), no "
                                    f"objects, or quality < {WHITE_BELOW}",
                           "green": f"quality >= {GREEN_FROM}", "yellow": "otherwise"},
        }

    def save(self, folder: str | Path) -> dict[str, Any]:
        """Write `selection.npz` into `folder`; return the card section describing it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / ARRAYS_FILE, reference=self.reference.astype(np.float16),
                            loo=self.loo)
        return self.describe()

    @classmethod
    def load(cls, folder: str | Path, card_section: dict[str, Any]) -> Selector:
        """The selector `save` wrote into `folder`, with the card section it returned."""
        path = Path(folder) / card_section.get("file", ARRAYS_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"selector arrays {path} do not exist")
        with np.load(path) as arrays:
            reference, loo = arrays["reference"].astype(np.float32), arrays["loo"]
        quality = card_section.get("quality")
        return cls(reference, card_section["novelty"]["copy_threshold"], loo,
                   QualityCalibration.from_dict(quality) if quality else None)


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


# ----------------------------------------------------------------------------- sampling


@dataclass
class SelectionResult:
    """What `sample_selected` returns: up to n passing images and how many it generated."""

    images: np.ndarray  # [k, H, W, 3] uint8, k <= n
    detections: list[Any]
    scores: list[ImageScore]
    tried: int  # images generated in all
    passed_fraction: float  # passing / tried
    complete: bool  # k == n
    message: str


def round_seed(seed: int | None, round_index: int, entropy: int) -> int:
    """The generator seed of one oversampling round, derived from the request's seed."""
    base = [seed] if seed is not None else [entropy]
    return int(np.random.SeedSequence([*base, round_index]).generate_state(1)[0])


def sample_selected(
    generate: Callable[[int, int], np.ndarray],
    label: Callable[[np.ndarray], list[Any]],
    selector: Selector,
    n: int,
    seed: int | None = None,
    select: str = "green",
    max_tries: int | None = None,
    max_batch: int = 256,
    distinct: bool = True,
) -> SelectionResult:
    """Generate, label and score in rounds until `n` images pass `select`, or the budget ends.

    `generate(k, seed)` returns k uint8 NHWC images; `label(images)` one detections object per
    image. Round r uses `round_seed(seed, r)`, so the same seed gives the same images. Each
    round asks for what is missing divided by the pass rate seen so far (+20 %), at most
    `max_batch`; at most `max_tries` images (default 20 × n) are generated. With `distinct`,
    an image within the copy threshold of one already accepted is rejected too (a collapsed
    generator repeating one new image does not fill the request). Returns fewer than n images
    when the budget runs out, and says so in `message`.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    passes(ImageScore(0, 0, 0, "red", 0, ""), select)  # validates `select`
    budget = 20 * n if max_tries is None else int(max_tries)
    if budget < n:
        raise ValueError(f"max_tries ({budget}) must be at least n ({n})")
    entropy = int(np.random.SeedSequence().entropy % 2**63) if seed is None else 0
    kept_images: list[np.ndarray] = []
    kept_det: list[Any] = []
    kept_scores: list[ImageScore] = []
    kept_features: list[np.ndarray] = []
    tried, round_index = 0, 0
    while len(kept_images) < n and tried < budget:
        missing = n - len(kept_images)
        rate = len(kept_images) / tried if tried else 1.0
        want = missing if select == "none" else math.ceil(1.2 * missing / max(rate, 0.05))
        k = max(1, min(want, max_batch, budget - tried))
        images = np.asarray(generate(k, round_seed(seed, round_index, entropy)))
        round_index += 1
        tried += len(images)
        if len(images) == 0:
            break
        detections = label(images)
        scores = selector.score(images, detections)
        features = novelty_features(images) if distinct and select != "none" else None
        for i, score in enumerate(scores):
            if len(kept_images) == n or not passes(score, select):
                continue
            if features is not None and kept_features:
                kept = np.stack(kept_features)[:, None]  # [k, 1, D]
                if distances(features[i : i + 1], kept).min() < selector.copy_threshold:
                    continue  # a repeat of an image already selected
            kept_images.append(images[i])
            kept_det.append(detections[i])
            kept_scores.append(score)
            if features is not None:
                kept_features.append(features[i])
    done = len(kept_images) == n
    message = (f"{len(kept_images)} of {n} images passed select={select} after {tried} tries"
               + ("" if done else f"; the budget of {budget} tries ran out"))
    shape = images.shape[1:] if tried else (0, 0, 3)
    out = np.stack(kept_images) if kept_images else np.zeros((0, *shape), np.uint8)
    return SelectionResult(out, kept_det, kept_scores, tried,
                           len(kept_images) / tried if tried else 0.0, done, message)
