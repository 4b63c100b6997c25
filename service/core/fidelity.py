"""Fidelity of a generated bin image: is it as sharp and as clean as the SKU's real photos?

The selector's quality judge only reads the labeller's detections, so a smeared 64×64 GAN blob
that still shows box-shaped colour patches passes as green. Fidelity looks at the pixels, in
two measures calibrated on the real photos (`FidelityCalibration.fit`):

sharpness: log of the energy above a Gaussian σ=1 blur over the energy between σ=1 and σ=2
    (grey levels, at a working scale, see below). A ratio of two bands is independent of
    contrast and content density; blur and smearing remove the top band first. Real sensor
    noise also lives in the top band, which helps: a photo the camera blurred still has
    noise, a smear does not.
checker: log of the fraction of the image's second-difference energy that is coherent at
    period 2 (demodulated by (-1)^x, (-1)^y or (-1)^(x+y) and averaged over 8×8 pixels; the
    largest of the three). GAN checkerboards (transposed-conv, nearest-neighbour upsampling)
    are period-2 patterns on the pixel grid. White noise gives 1/64, edges a little more; a
    period-2 pattern pushes it towards 1. Measured at the working scale like sharpness (a
    pattern on a grid finer than the photos' is averaged away there, which is how the image
    compares with the photos; measured natively, a nearest-neighbour upscale of a photo
    would count as checkered).

palette: the fraction of pixels whose colour (RGB at `PALETTE_LEVELS` levels per
    channel) the photos never show, within one level in every channel. A GAN that has not
    learnt a cluttered bin paints its products as noisy red, green and cyan blobs, sharp and
    unchecked at 64² (measured: 42 % of such samples were green by quality alone); their
    colours are not the products'. Composites, cut from the photos, keep the photos' colours.
    Each photo is calibrated against the palette of the others (leave one out).

Working scale. The photos fix a working side S = min(their shortest short side, MAX_WORK_SIDE),
and the measures are calibrated at S and at every halving of it down to MIN_WORK_SIDE (a ladder).
An image is measured at the largest ladder side not above its own short side (aspect kept;
area-averaged when shrinking, bilinear when enlarging an image smaller than every rung). So:
an image larger than the photos (photos 64², image 256²) is judged at 64 like the photos, and
a plain upscale of a photo passes; an image smaller than the photos (photos 1920×1440, GAN
output 64²) is judged against the photos shrunk to 64, not against their full detail; an
image upscaled by the generator to photo size (a 64² output resized to 256², photos 256²) is
judged at 256 and is smeared there, as it is when served. Upscales of a 64² photo to 256²
(photos 64²): nearest (exact after area shrinking), bicubic and Lanczos pass (fidelity >= 0.56);
a bilinear ×4 upscale scores 0.27-0.35: it loses about as much as a σ 0.5 px blur at 64².

Measured on rendered groups 12 (5 products) and 31 (8, cluttered), photos 256², images at
64²: held-out real bins and composites 0.00 % of pixels out of palette at the median (max
0.05-0.22 %), demo-profile GAN samples 0.65-0.76 % at the median (max 4.8-6.2 %).

Score (0..1): each measure is compared with the photos' worst value (least sharp, most
checkered, most out of palette) with a margin of max(floor, the photos' standard deviation);
it scores 1 up to the worst photo and falls linearly to 0 at two margins beyond it, so
FIDELITY_WHITE_BELOW = 0.5 is "one margin worse than any photo". The image's score is its
worst measure's.

Evidence (`tests/service/core/test_fidelity.py`, group 0, fit on 10 renders, 20 held out;
run it with -s for the distributions): the lowest real score against the highest score of each
corruption (blur σ 1.5 px at 256², σ 0.75 px at 64²; smear: ×4 down and up; checker: ±12 grey
levels at period 2; phase gain: ±5 % per 2×2 pixel phase, a transposed-conv checkerboard).

    scene, side       real min   blur   smear ×4   checker   phase gain
    tidy 64           0.92       0.00   0.00       0.00      0.00
    cluttered 64      0.91       0.00   0.00       0.00      0.54 (median 0.09)
    tidy 256          0.93       0.00   0.00       0.00      0.00
    cluttered 256     0.97       0.15   0.23       0.00      0.00

Not covered: seams (pasted rectangles). Straight-edge statistics (runs of strong, pixel-
localised axis-aligned steps, against the photos' own walls at the same place) did not
separate a same-bin paste from real product edges (real photos exceeded pasted ones), so no
seam measure is shipped; a paste of the same bin's floor is close to invisible in pixels.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

FIDELITY_WHITE_BELOW = 0.5  # fidelity under this: the image is broken (white)
MAX_WORK_SIDE = 256  # working short side cap: enough for blur at σ 1.5, cheap on 1920×1440
MIN_WORK_SIDE = 32  # smallest rung of the ladder
MEASURES = ("sharpness", "checker", "palette")
SHARPNESS_MARGIN = 0.3  # margin floor (log ratio): tidy photos vary by ~0.08 only
CHECKER_MARGIN = 0.5  # margin floor (log fraction): ×1.65 the photos' worst before white
CHECKER_WINDOW = 8  # pixels a period-2 pattern must stay coherent over
PALETTE_LEVELS = 32  # colour levels per channel of the palette
# Margin floor (fraction of pixels): a tidy bin of one product shows few colours, and the
# highlight of a product turned to a new angle takes colours between them (measured: 0.2-0.3 %
# of a single-product composite's pixels; at a margin of 0.001, 10 % of those composites were
# white, at 0.003 none; demo-profile GAN blobs of 5-8 products: 83 % / 67 % white).
PALETTE_MARGIN = 0.003


def _gray(image: np.ndarray, index: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 grey levels [H, W]."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"image {index} has shape {image.shape} and dtype {image.dtype}; "
                         "expected uint8 HxWx3")
    return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY).astype(
        np.float32)


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    """Short side to `side`, aspect kept (grey or colour)."""
    h, w = image.shape[:2]
    if min(h, w) == side:
        return image
    f = side / min(h, w)
    size = (max(side, round(w * f)), max(side, round(h * f)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


def sharpness(gray: np.ndarray) -> float:
    """log(energy above σ=1 / energy between σ=1 and σ=2) of a grey image."""
    g1 = cv2.GaussianBlur(gray, (0, 0), 1.0)
    g2 = cv2.GaussianBlur(gray, (0, 0), 2.0)
    return float(np.log((((gray - g1) ** 2).mean() + 1e-6) / (((g1 - g2) ** 2).mean() + 1e-6)))


def checker(gray: np.ndarray) -> float:
    """log of the fraction of second-difference energy coherent at period 2 (max of 3 kinds)."""
    h, w = gray.shape
    # 1-D second differences in x and y (reflected borders: no wrap-around seam).  # [H, W]
    p = cv2.copyMakeBorder(gray, 1, 1, 1, 1, cv2.BORDER_REFLECT)
    d = 2 * gray - 0.5 * (p[1:-1, :-2] + p[1:-1, 2:] + p[:-2, 1:-1] + p[2:, 1:-1])
    sx = np.where(np.arange(w) % 2 == 0, 1, -1).astype(np.float32)[None, :]
    sy = np.where(np.arange(h) % 2 == 0, 1, -1).astype(np.float32)[:, None]
    total = float((d**2).mean()) + 1e-6
    coherent = max(float((cv2.blur(d * m, (CHECKER_WINDOW, CHECKER_WINDOW)) ** 2).mean())
                   for m in (np.broadcast_to(sx, d.shape), np.broadcast_to(sy, d.shape), sx * sy))
    return float(np.log(coherent / total + 1e-6))


def _colour_bins(image: np.ndarray) -> np.ndarray:
    """The palette bin of each pixel of a uint8 RGB image.  # [H*W] int"""
    q = np.asarray(image)[..., :3].reshape(-1, 3).astype(np.int32) * PALETTE_LEVELS // 256
    return (q[:, 0] * PALETTE_LEVELS + q[:, 1]) * PALETTE_LEVELS + q[:, 2]


def _seen(image: np.ndarray) -> np.ndarray:
    """The palette bins a uint8 RGB image shows.  # [L**3] bool"""
    seen = np.zeros(PALETTE_LEVELS**3, bool)
    seen[_colour_bins(image)] = True
    return seen


def _widen(seen: np.ndarray) -> np.ndarray:
    """`seen` and every bin one level from it in each channel.  # [L**3] bool"""
    n = PALETTE_LEVELS
    cube = np.pad(seen.reshape(n, n, n), 1)
    wide = np.zeros((n, n, n), bool)
    for a in range(3):
        for b in range(3):
            for c in range(3):
                wide |= cube[a : a + n, b : b + n, c : c + n]
    return wide.reshape(-1)


def palette(image: np.ndarray, known: np.ndarray, keep: np.ndarray | None = None) -> float:
    """The fraction of pixels (of those `keep` marks, [H, W] bool) whose colour is not in
    `known`."""
    alien = ~known[_colour_bins(image)]
    if keep is not None:
        alien = alien[keep.reshape(-1)]
    return float(alien.mean()) if alien.size else 0.0


def _outside(boxes: np.ndarray, shape: tuple[int, int], side_shape: tuple[int, int]
             ) -> np.ndarray:
    """The pixels of an image of `side_shape` outside `boxes` (pixels of `shape`).  # [h, w]"""
    keep = np.ones(side_shape, bool)
    fy, fx = side_shape[0] / shape[0], side_shape[1] / shape[1]
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        keep[int(y1 * fy) : int(np.ceil(y2 * fy)), int(x1 * fx) : int(np.ceil(x2 * fx))] = False
    return keep


def _ladder(work_side: int) -> list[int]:
    """Working sides, largest first: S, S/2, ... down to MIN_WORK_SIDE (S alone if smaller)."""
    sides = [work_side]
    while sides[-1] // 2 >= MIN_WORK_SIDE:
        sides.append(sides[-1] // 2)
    return sides


@dataclass(frozen=True)
class FidelityCalibration:
    """The photos' sharpness, checker and palette statistics, per working side (rung).

    work_side: S, the largest rung of the sharpness ladder.
    sharp_ref / sharp_margin: per rung (the side as a string, for JSON), the photos' least
        sharp value and the margin (their standard deviation, at least SHARPNESS_MARGIN).
    checker_ref / checker_margin: per rung, the photos' most checkered value (at that rung or
        at S, whichever is larger) and margin.
    palette_ref / palette_margin: per rung, the most out-of-palette photo against the others'
        palette, and margin. known: per rung, the colours of all photos at that rung and the
        rungs above it, widened (`_widen`); empty for calibrations made before palette (the
        measure is skipped).
    """

    work_side: int
    sharp_ref: dict[str, float]
    sharp_margin: dict[str, float]
    checker_ref: dict[str, float]
    checker_margin: dict[str, float]
    images: int = 0
    palette_ref: dict[str, float] = field(default_factory=dict)
    palette_margin: dict[str, float] = field(default_factory=dict)
    known: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def fit(cls, images: Sequence[np.ndarray]) -> FidelityCalibration:
        """Calibrate on >= 2 real photos (uint8 [H, W, 3], any sizes)."""
        if len(images) < 2:
            raise ValueError(f"fidelity needs at least 2 real photos, got {len(images)}")
        grays = [_gray(im, i) for i, im in enumerate(images)]
        work_side = min(MAX_WORK_SIDE, min(min(g.shape) for g in grays))
        s_ref, s_margin, c_ref, c_margin, p_ref, p_margin, known = {}, {}, {}, {}, {}, {}, {}
        seen = [np.zeros(PALETTE_LEVELS**3, bool)] * len(images)
        for side in _ladder(work_side):
            small = [_resize(g, side) for g in grays]
            v = np.array([sharpness(g) for g in small])
            c = np.array([checker(g) for g in small])
            s_ref[str(side)], s_margin[str(side)] = float(v.min()), float(max(SHARPNESS_MARGIN,
                                                                                v.std()))
            # Area shrinking is a low-pass that hides the photos' own period-2 content, while
            # an image made at the small size has its own: never be stricter than at S (native
            # 64² renders vs 256² photos shrunk to 64: 15 % rejected without this).
            c_ref[str(side)] = float(max(c.max(), c_ref.get(str(work_side), -np.inf)))
            c_margin[str(side)] = float(max(CHECKER_MARGIN, c.std()))
            # Each photo's colours at this rung and every larger one: an image made at a small
            # size has sharp, noisy colours like the photos at S, not the averaged ones of
            # the photos shrunk (native 64² renders vs 256² photos: 40 % white without this).
            colour = [_resize(np.asarray(im)[..., :3], side) for im in images]
            seen = [_seen(im) | before for im, before in zip(colour, seen, strict=True)]
            p = np.array([palette(im, _widen(np.any(seen[:i] + seen[i + 1 :], axis=0)))
                          for i, im in enumerate(colour)])
            p_ref[str(side)], p_margin[str(side)] = float(p.max()), float(max(PALETTE_MARGIN,
                                                                                p.std()))
            known[str(side)] = _widen(np.any(seen, axis=0))
        return cls(work_side, s_ref, s_margin, c_ref, c_margin, len(grays), p_ref, p_margin,
                   known)

    def side_for(self, shape: tuple[int, ...]) -> int:
        """The rung an image of `shape` (H, W, ...) is measured at."""
        sides = _ladder(self.work_side)
        return next((s for s in sides if s <= min(shape[:2])), sides[-1])

    def measures(self, images: Sequence[np.ndarray],
                 foreign: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        """Raw measures of each image, in `MEASURES` order (palette NaN without a palette).
        `foreign`: per image, boxes [m, 4] (pixels) of other SKUs' products, whose colours
        the photos never showed: palette leaves them out. # [N, 3]"""
        out = np.full((len(images), len(MEASURES)), np.nan, np.float64)
        for i, im in enumerate(images):
            side = self.side_for(np.asarray(im).shape)
            g = _resize(_gray(im, i), side)
            out[i, :2] = sharpness(g), checker(g)
            if self.known:
                boxes = foreign[i] if foreign is not None else None
                keep = None if boxes is None or not len(boxes) else _outside(
                    boxes, np.asarray(im).shape[:2], g.shape)
                out[i, 2] = palette(_resize(np.asarray(im)[..., :3], side),
                                    self.known[str(side)], keep)
        return out

    def score_with_reasons(self, images: Sequence[np.ndarray],
                           foreign: Sequence[np.ndarray | None] | None = None
                           ) -> list[tuple[float, str]]:
        """(fidelity in [0, 1], the failing measure's name or "") per image (`foreign` as
        in `measures`)."""
        result = []
        for im, (s, c, p) in zip(images, self.measures(images, foreign), strict=True):
            side = str(self.side_for(np.asarray(im).shape))
            parts = {
                "sharpness": (self.sharp_ref[side] - s) / (2 * self.sharp_margin[side]),
                "checker": (c - self.checker_ref[side]) / (2 * self.checker_margin[side]),
            }
            if self.known:
                parts["palette"] = (p - self.palette_ref[side]) / (2 * self.palette_margin[side])
            worst = max(parts, key=parts.get)
            score = float(np.clip(1 - parts[worst], 0, 1))
            result.append((score, worst if score < FIDELITY_WHITE_BELOW else ""))
        return result

    def score(self, images: Sequence[np.ndarray],
              foreign: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        """Fidelity in [0, 1] per image: 1 = as sharp and clean as the photos (`foreign` as in
        `measures`).  # [N]"""
        return np.array([s for s, _ in self.score_with_reasons(images, foreign)], np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the model card (each rung's palette as base64 of its zlib'd
        bits)."""
        out = {"work_side": self.work_side, "sharp_ref": dict(self.sharp_ref),
               "sharp_margin": dict(self.sharp_margin), "checker_ref": self.checker_ref,
               "checker_margin": self.checker_margin, "images": self.images}
        if self.known:
            out |= {"palette_ref": self.palette_ref, "palette_margin": self.palette_margin,
                    "palette_levels": PALETTE_LEVELS,
                    "palette": {side: base64.b64encode(zlib.compress(
                        np.packbits(known).tobytes(), 9)).decode("ascii")
                        for side, known in self.known.items()}}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FidelityCalibration:
        """Inverse of `to_dict`."""
        known = {}
        if "palette" in d:
            if int(d["palette_levels"]) != PALETTE_LEVELS:
                raise ValueError(f"palette of {d['palette_levels']} levels; this version "
                                 f"reads {PALETTE_LEVELS}")
            for side, text in d["palette"].items():
                bits = np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8)
                known[str(side)] = np.unpackbits(bits)[: PALETTE_LEVELS**3].astype(bool)

        def floats(values: dict[str, Any]) -> dict[str, float]:
            return {str(k): float(v) for k, v in values.items()}

        return cls(int(d["work_side"]), floats(d["sharp_ref"]), floats(d["sharp_margin"]),
                   floats(d["checker_ref"]), floats(d["checker_margin"]),
                   int(d.get("images", 0)), floats(d.get("palette_ref", {})),
                   floats(d.get("palette_margin", {})), known)
