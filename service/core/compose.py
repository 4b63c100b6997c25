"""New bin arrangements from a SKU's own pixels: the layout sampler and compositor of `compose`.

Each image takes the empty bin (`ObjectBank.empty`), draws how many products it holds from the
photos' counts (and up to `extra_objects` beyond), and places products cut from the photos
wholly on the floor, at any spot and angle, a little larger or smaller, maybe mirrored.
Products overlap when the photos' do (cut-paste-learn: leaving out occlusion costs 10 mAP50),
but every one keeps at least `min_visible` of itself in view; otherwise they keep `gap` of
floor between them. A layout short of the sparsest photo's count is drawn again. Each drops
a soft shadow and is blended with one of `BLENDS` (mixing blending modes is worth 8 mAP50 in
the same study). Labels are the boxes of each product's visible pixels, by construction:
exact at any output size.

With `Distractors`, an image also holds up to `most` products of other SKUs' banks, placed by
the same rules among the SKU's own (each may take a product's place) and labelled with their
own classes, numbered after the SKU's (`with_distractors`), so a detector learns what its
product is not.

Numpy and OpenCV only: the service composes without torch. The refiner
(`service.core.refiner_session`) then makes the composite look like the photos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from service.core.object_bank import BankObject, ObjectBank
from service.core.quality import EXTRA_OBJECTS

BLENDS = ("hard", "feathered", "blurred")
MAX_SIZE = 1024  # longest side a request may ask for
DEFAULT_SIZE = 256
MAX_DISTRACTORS = 8  # other SKUs a request may name, and most distractors in one image
LAYOUTS = 4  # layouts drawn at most for one composite (see `compose`)
LABEL_ALPHA = 0.5  # a pixel with this much product counts as product for its label
MOSTLY_WHOLE = 0.35  # a cut-out whose box shared at most this much with others
# The photos show overlapping products when at least this fraction of the cut-outs shared more
# than `OVERLAP_SHARE` of their box: then composites overlap too; otherwise products stay
# apart, as in the photos (a tidy bin's products, overlapped, read as broken ones).
OVERLAP_SHARE, OVERLAP_OBJECTS = 0.1, 0.2


@dataclass(frozen=True)
class ComposeSettings:
    """How far composed arrangements stray from the photos'."""

    # Up to this many more products than the fullest photo: as many as the judge takes for a
    # new arrangement rather than a miscount.
    extra_objects: int = EXTRA_OBJECTS
    scale_jitter: float = 0.1  # products are scaled by 1 ± this
    mirror: float = 0.5  # chance to mirror a product
    # Every product keeps this fraction of its pixels in view: a product half hidden reads as
    # a broken one to a detector, and to the judge (its box is shorter than any product's).
    min_visible: float = 0.65
    shadow: float = 0.7  # chance of a soft shadow under a product
    shadow_strength: tuple[float, float] = (0.15, 0.4)  # how much the shadow darkens the floor
    shading: float = 0.06  # low-frequency lighting variation over the bin, ± fraction
    # When products stay apart (the photos show no overlaps), this much floor between them,
    # fraction of the long side: touching products read as one long one to the labeller
    # (measured: most partial-looking objects in tidy composites were two products end to end).
    gap: float = 0.012
    tries: int = 40  # spots tried per product before it is left out
    blends: tuple[str, ...] = BLENDS  # each product's edge, drawn from these


DEFAULTS = ComposeSettings()


@dataclass(frozen=True)
class Composite:
    """One composed image, its product mask and its labels."""

    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # float32 [H, W]: how much of each pixel is pasted product
    cls: np.ndarray  # [k] int64
    boxes: np.ndarray  # [k, 4] float32 x1, y1, x2, y2 pixels of each product's visible part
    foreign: np.ndarray  # [k] bool: the product is a distractor, from another SKU's bank


@dataclass(frozen=True)
class Distractors:
    """Other SKUs' banks whose products a composite may hold, and their classes' numbers."""

    banks: list[ObjectBank]
    first_class: list[int]  # each bank's class 0 in the composites' labels
    most: int = 2  # each image holds 0..most of them, drawn uniformly

    def __post_init__(self) -> None:
        if len(self.banks) != len(self.first_class):
            raise ValueError("distractors need one first class per bank")
        if not 0 <= self.most <= MAX_DISTRACTORS:
            raise ValueError(f"max_distractors must be between 0 and {MAX_DISTRACTORS}, got "
                             f"{self.most}")


def with_distractors(own: ObjectBank, others: dict[str, ObjectBank], most: int = 2
                     ) -> tuple[Distractors, list[str]]:
    """Distractors from `others` (SKU: bank) and the class names of the composites' labels:
    `own`'s, then each other bank's in order. A name already taken becomes "sku/name", so
    every class of the labels is one product line."""
    names, first = list(own.names), []
    for sku, bank in others.items():
        first.append(len(names))
        names += [f"{sku}/{n}" if n in names else n for n in bank.names]
    return Distractors(list(others.values()), first, most), names


@dataclass(frozen=True)
class Layer:
    """One placed product: its alpha over the whole canvas, its pixels over its own box."""

    cls: int
    alpha: np.ndarray  # float32 [H, W], zero outside the box
    pixels: np.ndarray  # float32 [h, w, 3]: the box's pixels
    corner: tuple[int, int]  # the box's top-left (y, x) on the canvas
    foreign: bool = False

    def window(self, margin: int) -> tuple[slice, slice]:
        """The box widened by `margin` pixels on each side, within the canvas."""
        (y0, x0), (h, w) = self.corner, self.pixels.shape[:2]
        height, width = self.alpha.shape
        return (slice(max(y0 - margin, 0), min(y0 + h + margin, height)),
                slice(max(x0 - margin, 0), min(x0 + w + margin, width)))

    def pixels_in(self, window: tuple[slice, slice]) -> np.ndarray:
        """The layer's pixels over `window` (one that holds the box), zero outside the box."""
        ys, xs = window
        out = np.zeros((ys.stop - ys.start, xs.stop - xs.start, 3), np.float32)
        (y0, x0), (h, w) = self.corner, self.pixels.shape[:2]
        out[y0 - ys.start : y0 - ys.start + h, x0 - xs.start : x0 - xs.start + w] = self.pixels
        return out


@dataclass(frozen=True)
class _Item:
    """A product to place: the cut-out, its bank's width (its scale) and its label."""

    obj: BankObject
    bank_width: int
    cls: int
    foreign: bool = False


def output_shape(bank: ObjectBank, size: int) -> tuple[int, int]:
    """(height, width) of a composite whose long side is `size`, in the photos' aspect."""
    if not 16 <= size <= MAX_SIZE:
        raise ValueError(f"size must be between 16 and {MAX_SIZE}, got {size}")
    h, w = bank.shape
    scale = size / max(h, w)
    return max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)


def _transform(obj: BankObject, scale: float, angle: float, mirror: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """The product scaled, turned by `angle` degrees and maybe mirrored, on a canvas that just
    holds it: (pixels float32 [h, w, 3], alpha float32 [h, w])."""
    pixels, alpha = obj.pixels, obj.alpha
    if mirror:
        pixels, alpha = pixels[:, ::-1], alpha[:, ::-1]
    h, w = alpha.shape
    cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    out_w = max(int(math.ceil((w * cos + h * sin) * scale)) + 2, 1)
    out_h = max(int(math.ceil((w * sin + h * cos) * scale)) + 2, 1)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    matrix[:, 2] += (out_w / 2 - w / 2, out_h / 2 - h / 2)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    warped = cv2.warpAffine(np.ascontiguousarray(pixels, np.float32), matrix, (out_w, out_h),
                            flags=interp, borderMode=cv2.BORDER_REPLICATE)
    warped_alpha = cv2.warpAffine(np.ascontiguousarray(alpha, np.float32), matrix,
                                  (out_w, out_h), flags=interp, borderValue=0)
    return warped, warped_alpha


def _shading(shape: tuple[int, int], amount: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth gain field around 1 (uneven light over the bin).  # [H, W, 1]"""
    coarse = rng.uniform(-amount, amount, (3, 3)).astype(np.float32)
    gain = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return (1.0 + gain)[..., None]


def _visible(alphas: list[np.ndarray]) -> list[np.ndarray]:
    """Each layer's product pixels that nothing above hides (bottom layer first)."""
    shown = []
    above = np.zeros_like(alphas[0], bool) if alphas else None
    for alpha in reversed(alphas):
        solid = alpha >= LABEL_ALPHA
        shown.append(solid & ~above)
        above |= solid
    return shown[::-1]


def _weights(bank: ObjectBank) -> np.ndarray:
    """How often each bank object is drawn, summing to 1.  # [n]"""
    # Classes as often as in the photos. Within a class, products the photos showed whole make
    # better cut-outs: those that shared much of their box with another are left out while
    # the class has whole ones, and the rest drawn by how little they shared.
    classes = np.array([o.cls for o in bank.objects])
    weights = np.array([(1 - o.occluded) ** 2 + 0.05 for o in bank.objects])
    whole = {o.cls for o in bank.objects if o.occluded <= MOSTLY_WHOLE}
    weights *= [o.occluded <= MOSTLY_WHOLE or o.cls not in whole for o in bank.objects]
    for c in np.unique(classes):  # each class's weights sum to its share of the objects
        weights[classes == c] *= (classes == c).sum() / weights[classes == c].sum()
    return weights / weights.sum()


def _pick(bank: ObjectBank, settings: ComposeSettings, rng: np.random.Generator) -> np.ndarray:
    """Which bank objects one image holds (indices, drawn with replacement)."""
    # A photo's count, one fewer or one more, within the photos' range and `extra_objects`.
    count = int(rng.choice(bank.counts)) + int(rng.integers(-1, 2))
    count = int(np.clip(count, max(min(bank.counts), 1),
                        max(bank.counts) + settings.extra_objects))
    return rng.choice(len(bank.objects), size=count, p=_weights(bank))


def _pick_foreign(distractors: Distractors, rng: np.random.Generator) -> list[_Item]:
    """0..most distractors, each from a bank drawn uniformly, then as `_pick` draws."""
    items = []
    for _ in range(int(rng.integers(0, distractors.most + 1))):
        b = int(rng.integers(len(distractors.banks)))
        bank = distractors.banks[b]
        obj = bank.objects[int(rng.choice(len(bank.objects), p=_weights(bank)))]
        items.append(_Item(obj, bank.shape[1], distractors.first_class[b] + obj.cls, True))
    return items


def overlapping(bank: ObjectBank) -> bool:
    """Whether the photos show products overlapping (see `OVERLAP_SHARE`)."""
    return np.mean([o.occluded > OVERLAP_SHARE for o in bank.objects]) >= OVERLAP_OBJECTS


def _place(bank: ObjectBank, picks: np.ndarray, shape: tuple[int, int],
           settings: ComposeSettings, rng: np.random.Generator,
           foreign: list[_Item] | None = None) -> list[Layer]:
    """Each pick and `foreign` product transformed and put on the floor, bottom first; a
    product that finds no spot leaving every product `min_visible` in view (when the photos
    show no overlaps: `gap` away from every other product) within `tries` is left out."""
    height, width = shape
    apart = not overlapping(bank)
    size = 2 * int(round(settings.gap * max(height, width))) + 1
    gap = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    taken = np.zeros((height, width), np.uint8)  # products so far, widened by the gap
    fx0, fy0, fx1, fy1 = (bank.floor[0] * width, bank.floor[1] * height,
                          bank.floor[2] * width, bank.floor[3] * height)
    items = [_Item(bank.objects[int(i)], bank.shape[1], bank.objects[int(i)].cls)
             for i in picks]
    if foreign:  # anywhere in the order: a distractor may take a product's place in a full bin
        items += foreign
        items = [items[int(i)] for i in rng.permutation(len(items))]
    if apart:  # largest first: small products fill the gaps (bottom-up order is moot here)
        items.sort(key=lambda item: -float((item.obj.alpha > 0).sum()))
    layers: list[Layer] = []
    wholes: list[int] = []  # each layer's product pixels
    # A product keeps its size relative to the bin: another SKU's bank is scaled by its own
    # width (the same camera and bin, another product).
    for item in items:
        obj = item.obj
        scale = width / item.bank_width * (1 + rng.uniform(-settings.scale_jitter,
                                                           settings.scale_jitter))
        pixels, alpha = _transform(obj, scale, rng.uniform(0, 360), rng.random() < settings.mirror)
        h, w = alpha.shape
        if h >= height or w >= width:
            continue
        whole = max(int((alpha >= LABEL_ALPHA).sum()), 1)  # its pixels, wherever it lands
        for _ in range(settings.tries):
            cx = _spot(fx0, fx1, w, width, rng)
            cy = _spot(fy0, fy1, h, height, rng)
            x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
            x0, y0 = min(max(x0, 0), width - w), min(max(y0, 0), height - h)
            if apart and taken[y0 : y0 + h, x0 : x0 + w][alpha > 0].any():
                continue
            full = np.zeros((height, width), np.float32)
            full[y0 : y0 + h, x0 : x0 + w] = alpha
            candidate = [layer.alpha for layer in layers] + [full]
            # Apart, nothing overlaps, so every product is in view whole.
            if apart or all(shown.sum() >= settings.min_visible * n for shown, n
                            in zip(_visible(candidate), [*wholes, whole], strict=True)):
                layers.append(Layer(item.cls, full, pixels, (y0, x0), item.foreign))
                wholes.append(whole)
                if apart:
                    taken |= cv2.dilate((full > 0).astype(np.uint8), gap)
                break
    return layers


def _spot(lo: float, hi: float, extent: int, side: int, rng: np.random.Generator) -> float:
    """Where a product of `extent` pixels centres along one axis: all of it on the floor
    [lo, hi] (a product half over the bin's wall floats in the air), or, when it is longer
    than the floor is wide, its centre on the floor; always inside the image."""
    if hi - lo >= extent:
        lo, hi = lo + extent / 2, hi - extent / 2
    return rng.uniform(max(lo, extent / 2), max(min(hi, side - extent / 2), extent / 2))


def _draw(image: np.ndarray, layers: list[Layer], settings: ComposeSettings,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The layers drawn over `image` (float32, in place), each with its shadow and blend;
    returns the image and how much of each pixel is pasted product."""
    # Each step touches only the window its layer can reach (its box, widened by the shadow's
    # shift and blur): outside it, every step leaves a pixel exactly as it was, and drawing
    # the whole canvas per layer was a third of a composite's time.
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.float32)
    for layer in layers:
        if rng.random() < settings.shadow:
            dx = rng.uniform(-1, 1) * 0.01 * width
            dy = rng.uniform(0.2, 1) * 0.015 * height
            sigma = max(0.008 * width, 0.6)
            window = layer.window(math.ceil(max(abs(dx), dy)) + 1 + _reach(sigma))
            shadow = cv2.warpAffine(layer.alpha[window], np.float32([[1, 0, dx], [0, 1, dy]]),
                                    (window[1].stop - window[1].start,
                                     window[0].stop - window[0].start))
            shadow = cv2.GaussianBlur(shadow, (0, 0), sigma)
            image[window] *= (1 - rng.uniform(*settings.shadow_strength) * shadow)[..., None]
        blend = settings.blends[int(rng.integers(len(settings.blends)))]
        if blend == "blurred":
            sigma = max(0.004 * width, 0.5)
            window = layer.window(_reach(sigma))
            weight = cv2.GaussianBlur(layer.alpha[window], (0, 0), sigma)
        else:
            window = layer.window(0)
            alpha = layer.alpha[window]
            weight = (alpha >= LABEL_ALPHA).astype(np.float32) if blend == "hard" else alpha
        image[window] = (image[window] * (1 - weight[..., None])
                         + layer.pixels_in(window) * weight[..., None])
        mask[window] = np.maximum(mask[window], weight)
    return image, mask


def _reach(sigma: float) -> int:
    """A margin for OpenCV's Gaussian blur of float images on a window: twice its kernel's
    radius (4 sigma), so the window's border reflects zeros. Measured: with one radius the
    mask differed from the whole canvas' in the 9th digit; with two it is the same."""
    return 2 * (math.ceil(4 * sigma) + 1)


def compose(bank: ObjectBank, size: int, rng: np.random.Generator,
            settings: ComposeSettings = DEFAULTS,
            distractors: Distractors | None = None) -> Composite:
    """One new arrangement of the bank's products (and maybe `distractors`) on its empty bin,
    long side `size`."""
    height, width = output_shape(bank, size)
    upscale = width > bank.shape[1]
    image = cv2.resize(bank.empty, (width, height),
                       interpolation=cv2.INTER_LINEAR if upscale else cv2.INTER_AREA)
    image = image.astype(np.float32) * _shading((height, width), settings.shading, rng)
    # A layout that could not fit as many products as the sparsest photo is drawn again (a
    # bin with fewer products than any photo reads as one with products missing).
    layers: list[Layer] = []
    for _ in range(LAYOUTS):
        picks = _pick(bank, settings, rng)
        foreign = _pick_foreign(distractors, rng) if distractors is not None else None
        drawn = _place(bank, picks, (height, width), settings, rng, foreign)
        if _held(drawn) > _held(layers):
            layers = drawn
        if _held(layers) >= min(bank.counts):
            break
    image, mask = _draw(image, layers, settings, rng)
    if bank.gains:  # one photo's colour cast, on everything
        image *= np.asarray(bank.gains[int(rng.integers(len(bank.gains)))], np.float32)
    if bank.noise > 0:  # the floor is a median, without the photos' noise; products have it
        noise = rng.normal(0, bank.noise, image.shape).astype(np.float32)
        image += noise * (1 - mask[..., None])
    cls, boxes, foreign_flags = [], [], []
    for layer, visible in zip(layers, _visible([layer.alpha for layer in layers]), strict=True):
        ys, xs = np.nonzero(visible)
        if len(xs):
            cls.append(layer.cls)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            foreign_flags.append(layer.foreign)
    return Composite(np.clip(image + 0.5, 0, 255).astype(np.uint8), mask,
                     np.asarray(cls, np.int64), np.asarray(boxes, np.float32).reshape(-1, 4),
                     np.asarray(foreign_flags, bool))


def _held(layers: list[Layer]) -> int:
    """How many products the layers hold, distractors included (each takes a product's
    place); none without one of the SKU's own."""
    return len(layers) if any(not layer.foreign for layer in layers) else 0


def compose_batch(bank: ObjectBank, n: int, size: int, seed: int | None,
                  settings: ComposeSettings = DEFAULTS,
                  distractors: Distractors | None = None) -> list[Composite]:
    """`n` composites; the same seed gives the same composites."""
    rng = np.random.default_rng(seed)
    return [compose(bank, size, rng, settings, distractors) for _ in range(n)]
