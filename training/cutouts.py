"""Cutting a SKU's products out of its photos into an object bank (`service.core.object_bank`).

Offline and without downloads (no SAM, no rembg):

- Each photo's **colour cast** is measured on its bare floor (a gain per channel against the
  photos' median) and divided out, so that the median below mixes like with like; the bank
  keeps the gains, and each composite takes one of them back on.
- The **empty bin** is the per-pixel median of the floor the photos show between their
  products, with the pixels every photo covers inpainted (OpenCV Telea). Two passes: first
  boxes (and a margin) are left out, then only the products' masks (widened): a cluttered
  bin shows far more floor between its products than between their boxes. An uploaded photo
  of the empty bin replaces the estimate.
- Each product's **mask** starts from its colour difference, inside its box, to that empty
  bin lit like the floor around the box (a bright spot is not product), refined with GrabCut
  (pixels outside the box are floor; shadow, an even darkening of the floor, is probable
  floor; pixels shared with another box are never sure product), then given soft edges.
- Photos of any size are first scaled to one working size (long side at most
  `BANK_MAX_SIDE`, the first photo's aspect): the median needs aligned pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from service.core.object_bank import BankObject, ObjectBank
from service.core.yolo import pixel_boxes, xyxy

BANK_MAX_SIDE = 1024  # the bank's working long side: the largest composite served
MARGIN = 0.01  # floor left out around each box for the empty-bin median, fraction of long side
FLOOR_PAD = 0.03  # the floor is the photos' boxes' extent, widened by this fraction
GRABCUT_ITERATIONS = 4
MIN_DIFF = 14.0  # grey levels: smaller differences to the empty bin are floor
SHADOW_RATIO = (0.2, 0.93)  # photo / empty bin in every channel: a shadow's darkening
SHADOW_CHROMA = 0.2  # at most this spread of that ratio between channels (even darkening)
MASK_MARGIN = 0.02  # floor hidden around each mask in the second empty-bin pass
MIN_SUPPORT = 0.25  # fraction of the photos that must show a floor pixel bare
OUTLIER = 40.0  # grey levels from the smoothed first estimate: not floor
OUTLIER_SCALE = 0.03  # that smoothing's sigma, fraction of the long side


@dataclass(frozen=True)
class Photo:
    """One photo at the working size, with its YOLO rows."""

    name: str
    image: np.ndarray  # uint8 [H, W, 3]
    rows: np.ndarray  # [k, 5]


def working_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """(height, width) the bank works at for photos of `shape` (height, width)."""
    h, w = shape
    scale = min(1.0, BANK_MAX_SIDE / max(h, w))
    return max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)


def to_working_size(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Every image resized to the working shape of the first (YOLO rows are normalised, so
    they stay valid)."""
    h, w = working_shape(images[0].shape[:2])
    return [im if im.shape[:2] == (h, w) else cv2.resize(
        im, (w, h), interpolation=cv2.INTER_AREA if im.shape[0] > h else cv2.INTER_LINEAR)
        for im in images]


def covered(shape: tuple[int, int], boxes: np.ndarray, margin: int) -> np.ndarray:
    """Pixels inside any box widened by `margin`.  # [H, W] bool"""
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(y0 - margin, 0) : y1 + margin, max(x0 - margin, 0) : x1 + margin] = True
    return mask


def floor_gains(photos: Sequence[Photo]) -> np.ndarray:
    """Each photo's colour cast: its bare floor's median per channel over the photos' median of
    those (1 = no cast).  # [N, 3]"""
    shape = photos[0].image.shape[:2]
    margin = max(int(round(MARGIN * max(shape))), 1)
    means = []
    for p in photos:
        floor = ~covered(shape, pixel_boxes(p.rows, shape), margin)
        pixels = p.image[floor] if floor.sum() > 100 else p.image.reshape(-1, 3)
        means.append(np.median(pixels.reshape(-1, 3), axis=0).astype(np.float64) + 1.0)
    means = np.array(means)
    return (means / np.median(means, axis=0)).astype(np.float32)


def neutral(photos: Sequence[Photo], gains: np.ndarray) -> list[Photo]:
    """The photos with their colour casts divided out."""
    return [Photo(p.name, np.clip(p.image / g + 0.5, 0, 255).astype(np.uint8), p.rows)
            for p, g in zip(photos, gains, strict=True)]


def estimate_empty(photos: Sequence[Photo], hidden: np.ndarray | None = None) -> np.ndarray:
    """The empty bin: median of each pixel over the photos where nothing hides the floor
    (`hidden` [N, H, W], default: the boxes and a margin).

    Then once more without the samples far from a smooth version of that first estimate:
    where products crowd one spot in most photos (or a product went unlabelled), the median
    of what is left there is product, and stands out from the floor around it."""
    shape = photos[0].image.shape[:2]
    margin = max(int(round(MARGIN * max(shape))), 1)
    stack = np.stack([p.image for p in photos]).astype(np.float32)
    if hidden is None:
        hidden = np.stack([covered(shape, pixel_boxes(p.rows, shape), margin) for p in photos])
    stack[hidden] = np.nan
    first = _median_inpainted(stack)
    smooth = cv2.GaussianBlur(first, (0, 0), OUTLIER_SCALE * max(shape))
    stack[np.abs(stack - smooth.astype(np.float32)).max(axis=3) > OUTLIER] = np.nan
    return _median_inpainted(stack)


def _median_inpainted(stack: np.ndarray) -> np.ndarray:
    """Per-pixel median over the samples that are not NaN (float32 [N, H, W, 3]); pixels too
    few samples show are inpainted from their surroundings (a pixel one or two photos show
    bare is as likely a piece of product a mask missed).  # uint8 [H, W, 3]"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: inpainted below
        median = np.nanmedian(stack, axis=0)
    seen = (~np.isnan(stack[..., 0])).sum(axis=0)
    holes = seen < max(MIN_SUPPORT * len(stack), 2)
    empty = np.nan_to_num(median, nan=0.0).clip(0, 255).astype(np.uint8)
    if holes.any():
        radius = max(3, int(0.02 * max(empty.shape[:2])))
        empty = cv2.inpaint(empty, holes.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    return empty


def estimate_noise(photos: Sequence[Photo]) -> float:
    """The photos' sensor noise (grey-level sd) on the bare floor, from the residual of a small
    blur; the median empty bin has none, so composites add it back."""
    shape = photos[0].image.shape[:2]
    margin = max(int(round(MARGIN * max(shape))), 1)
    residuals = []
    for p in photos:
        image = p.image.astype(np.float32)
        residual = image - cv2.GaussianBlur(image, (0, 0), 1.0)
        floor = ~covered(shape, pixel_boxes(p.rows, shape), margin)
        if floor.sum() > 100:
            residuals.append(residual[floor].ravel())
    if not residuals:
        return 0.0
    # Robust sd (median absolute deviation: the floor's edges and scratches are outliers); a
    # 1-px Gaussian leaves ~0.87 of white noise's sd in the residual.
    mad = np.median(np.abs(np.concatenate(residuals)))
    return float(min(1.4826 * mad / 0.87, 12.0))


def floor_extent(photos: Sequence[Photo]) -> tuple[float, float, float, float]:
    """Where the photos' products lie (x0, y0, x1, y1 as fractions), a little widened."""
    rows = np.concatenate([p.rows for p in photos])
    boxes = xyxy(rows, (1, 1))
    x0, y0 = boxes[:, 0].min() - FLOOR_PAD, boxes[:, 1].min() - FLOOR_PAD
    x1, y1 = boxes[:, 2].max() + FLOOR_PAD, boxes[:, 3].max() + FLOOR_PAD
    return (float(max(x0, 0)), float(max(y0, 0)), float(min(x1, 1)), float(min(y1, 1)))


def object_alpha(image: np.ndarray, empty: np.ndarray, box: np.ndarray,
                 others: np.ndarray) -> np.ndarray:
    """How much of each pixel of `box` is the product (float32 [h, w] in [0, 1]).

    `others` are the photo's other boxes: pixels they share with this one are never sure
    product, so a touching neighbour is cut out with it only if GrabCut's colour model says
    it belongs."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = image.shape[:2]
    pad = max(4, int(0.2 * max(x1 - x0, y1 - y0)))
    cx0, cy0, cx1, cy1 = max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, w), min(y1 + pad, h)
    crop = image[cy0:cy1, cx0:cx1]
    inside = np.zeros(crop.shape[:2], bool)
    inside[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0] = True
    boxed = np.zeros_like(inside)  # inside any other box
    for ox0, oy0, ox1, oy1 in others:
        boxed[max(oy0 - cy0, 0) : max(oy1 - cy0, 0), max(ox0 - cx0, 0) : max(ox1 - cx0, 0)] = True
    shared = boxed & inside
    # The empty bin lit as this spot of this photo: a bright spot or uneven light makes the
    # floor around a product differ from the median bin, which must not count as product.
    background = empty[cy0:cy1, cx0:cx1].astype(np.float32)
    ring = ~inside & ~boxed
    if ring.sum() >= 16:
        gain = (np.median(crop[ring], axis=0) + 1) / (np.median(background[ring], axis=0) + 1)
        background = background * gain.clip(0.5, 2.0)
    smooth = cv2.GaussianBlur(crop.astype(np.float32), (0, 0), 0.8)
    background = cv2.GaussianBlur(background, (0, 0), 0.8)
    diff = np.abs(smooth - background).max(axis=2)
    # Shadow: the floor darkened evenly in every channel, which is floor, not product (on
    # smoothed pixels: sensor noise on a dark floor makes one pixel's ratios uneven).
    ratio = (smooth + 1) / (background + 1)
    shadow = ((ratio.max(axis=2) < SHADOW_RATIO[1]) & (ratio.min(axis=2) > SHADOW_RATIO[0])
              & (ratio.max(axis=2) - ratio.min(axis=2) < SHADOW_CHROMA))
    differs = (diff > MIN_DIFF) & ~shadow
    mask = np.full(crop.shape[:2], cv2.GC_BGD, np.uint8)
    mask[inside] = cv2.GC_PR_BGD
    # Pixels shared with another box that differ from the floor are probably product, ours
    # or the neighbour's: GrabCut's colour model tells. Left out, a product half under another
    # box was cut in half (measured on rendered cluttered bins: recall 0.83 -> 0.93).
    mask[inside & differs] = cv2.GC_PR_FGD
    # Sure product: far from the floor, in our box alone, and not a deep shadow (a shadow
    # taken as sure product is cut out with it and widens its label).
    core = cv2.erode((inside & ~shared).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    mask[core & (diff > 2.5 * MIN_DIFF) & ~shadow] = cv2.GC_FGD
    fallback = (inside & differs).astype(np.float32)
    if (mask == cv2.GC_FGD).sum() + (mask == cv2.GC_PR_FGD).sum() < 4 or (~inside).sum() < 4:
        solid = fallback
    else:
        try:
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            cv2.grabCut(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd,
                        GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
            solid = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.float32)
        except cv2.error:  # too few pixels of one kind for its colour model
            solid = fallback
    solid = _largest_part(solid)
    # Soft edges: half a pixel of blur at the bank's scale, and nothing outside the box.
    alpha = cv2.GaussianBlur(solid, (0, 0), 0.7) * inside
    return alpha[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0].astype(np.float32)


def _largest_part(solid: np.ndarray) -> np.ndarray:
    """The largest connected part of a binary mask, holes filled (a label or a shine on a
    product is product, not floor)."""
    count, parts, stats, _ = cv2.connectedComponentsWithStats(solid.astype(np.uint8), 8)
    if count <= 2:
        keep = solid > 0
    else:
        keep = parts == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    contours, _ = cv2.findContours(keep.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    filled = np.zeros(solid.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(np.float32)


def build_bank(photos: Sequence[Photo], names: Sequence[str],
               empty: np.ndarray | None = None) -> ObjectBank:
    """The object bank of `photos` (at one working size, with rows). `empty`: an uploaded
    photo of the empty bin (any size), else it is estimated from the photos."""
    if not photos:
        raise ValueError("no photos to build an object bank from")
    shape = photos[0].image.shape[:2]
    if any(p.image.shape[:2] != shape for p in photos):
        raise ValueError("photos must share one working size (see to_working_size)")
    labelled = [p for p in photos if len(p.rows)]
    if not labelled:
        raise ValueError("no photo has a labelled product: compose needs YOLO labels or a "
                         "labeller that finds the products")
    gains = floor_gains(photos)
    photos = neutral(photos, gains)
    if empty is None:
        _, hidden = cut_all(photos, estimate_empty(photos))
        background, source = estimate_empty(photos, hidden), "photos"
    else:
        background = cv2.resize(np.asarray(empty)[..., :3], (shape[1], shape[0]),
                                interpolation=cv2.INTER_AREA)
        source = "upload"
    objects, _ = cut_all(photos, background)
    return ObjectBank(objects, background, list(names), [len(p.rows) for p in photos],
                      floor_extent(labelled), estimate_noise(photos), source,
                      gains=[[round(float(v), 4) for v in g] for g in gains])


def cut_all(photos: Sequence[Photo], empty: np.ndarray
            ) -> tuple[list[BankObject], np.ndarray]:
    """Every labelled product of `photos`, cut out against `empty`, and where each photo's
    products hide the floor: their masks widened by `MASK_MARGIN`, which takes their shadows
    too (a box whose product could not be cut out hides all of itself).  # [N, H, W] bool"""
    shape = empty.shape[:2]
    objects = []
    hidden = np.zeros((len(photos), *shape), np.uint8)
    for n, photo in enumerate(photos):
        boxes = pixel_boxes(photo.rows, shape)
        for i, (row, box) in enumerate(zip(photo.rows, boxes, strict=True)):
            x0, y0, x1, y1 = box
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            others = np.delete(boxes, i, axis=0)
            alpha = object_alpha(photo.image, empty, box, others)
            if (alpha >= 0.5).sum() < 4:
                hidden[n, y0:y1, x0:x1] = 1
                continue
            hidden[n, y0:y1, x0:x1] |= (alpha > 0.1).astype(np.uint8)
            share = covered(shape, others, 0)[y0:y1, x0:x1].mean() if len(others) else 0.0
            objects.append(BankObject(int(row[0]), photo.image[y0:y1, x0:x1].copy(), alpha,
                                      photo.name, float(share)))
    size = max(3, int(2 * MASK_MARGIN * max(shape)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    return objects, np.stack([cv2.dilate(h, kernel) > 0 for h in hidden])
