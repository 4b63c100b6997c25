"""Procedural bin images: the built-in demo corpus that stands in for the thesis' private photos.

A camera looks straight down into a plastic warehouse bin holding 1-6 products of the thesis'
four classes. Like the thesis data, images come in *groups*: one fixed set of products
(classes, colours, sizes), decided by `(seed, group)`, photographed in many arrangements
(positions, rotations, lighting). Products always lie on the bin floor; in a tidy scene they
never overlap.

Everything is drawn with signed distance functions (SDFs), so edges are anti-aliased at any
size from 32×32 to 1280×720 without supersampling. Every YOLO box is the bounding box of the
object's own rendered alpha mask (alpha >= 0.5), never of its nominal geometry, and shadows are
not part of it.

Two scene kinds (`SCENES`): `tidy`, the default, as above; `cluttered`, what real picking bins
look like: groups of 3-8 products, each image shows a random 60-100 % of them, products touch
and overlap (each label boxes the object's *visible* pixels; an object showing less than
`MIN_VISIBLE` of itself gets no label), and lighting varies more (colour cast, a bright spot,
uneven shading, some images blurred or noisier).

`render_image(..., partial=True)` cuts every product in half: a random half, mostly one end, is
erased so the bin floor shows through, and its shadow is cut too. Such images imitate the
thesis' "white" category (partial objects) for sanity checks of quality metrics; their labels
box the visible half.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from service.core.yolo import write_data_yaml, write_rows
from training.bins import background, bin_floor, bin_geometry, smooth_noise
from training.products import CLASSES, PRODUCT_PAINTERS, Product, make_product

MIN_SIDE, MAX_SIDE = 32, 2048
ALPHA_IN = 0.5  # a pixel belongs to an object (and its box) from this coverage on
SCENES = ("tidy", "cluttered")
MIN_VISIBLE = 0.3  # cluttered: an object showing less of its pixels than this gets no label
_STEM = re.compile(r"^g\d{3,}_\d{4,}\.(png|txt)$")

__all__ = [
    "CLASSES", "MIN_VISIBLE", "SCENES", "Placement", "Product", "Scene", "arrange",
    "arrange_cluttered", "draw",
    "labels_from_masks", "make_group", "make_product", "parse_size", "render_image",
    "write_corpus",
]


def check_scene(kind: str) -> str:
    """`kind` if it is one of `SCENES`, else a ValueError naming them."""
    if kind not in SCENES:
        raise ValueError(f"unknown scene kind {kind!r}; choose one of {', '.join(SCENES)}")
    return kind


def make_group(seed: int, group: int, kind: str = "tidy") -> list[Product]:
    """The fixed product set of `group` for `seed`, largest first: 1-6 products for a tidy
    scene, 3-8 for a cluttered one (a product set of its own, not the tidy group's)."""
    if seed < 0 or group < 0:
        raise ValueError(f"seed and group must be >= 0, got seed={seed}, group={group}")
    if check_scene(kind) == "cluttered":
        rng = np.random.default_rng([seed, group, 0xC1])
        count = int(rng.integers(3, 9))
        scale = 1.0 - 0.04 * count  # larger than tidy: overlaps are wanted, not avoided
    else:
        rng = np.random.default_rng([seed, group, 0x67])
        count = int(rng.integers(1, 7))
        # Crowded bins get smaller products so that random placement always finds room.
        scale = 1.12 - 0.08 * count
    products = [make_product(CLASSES[int(rng.integers(len(CLASSES)))], scale, rng)
                for _ in range(count)]
    return sorted(products, key=lambda p: -p.length * p.width)


# ----------------------------------------------------------------------- arrangement


@dataclass(frozen=True)
class Placement:
    """One product on the floor: centre in pixels, rotation of its long axis, optional cut."""

    product: Product
    cx: float
    cy: float
    angle: float  # radians, long axis from +x towards +y
    cut: float | None = None  # direction (radians, local frame) of the erased half, or None


@dataclass(frozen=True)
class Scene:
    """Everything that decides one image's pixels; `draw` is a pure function of it."""

    size: tuple[int, int]  # (W, H)
    placements: tuple[Placement, ...]
    to_light: tuple[float, float]  # unit vector in image coordinates pointing at the lamp
    brightness: float
    gradient: float  # strength of the brightness ramp towards the lamp
    vignette: float
    tint: tuple[float, float, float]  # white-balance multipliers
    noise_sigma: float  # sensor noise, fraction of full scale
    noise_seed: int
    # Cluttered scenes only; the defaults leave a tidy scene's pixels as they were.
    stacked: bool = False  # products may overlap: each is drawn with its shadow over the earlier
    spot: tuple[float, float, float, float] = (0.5, 0.5, 1.0, 0.0)  # bright spot: centre x, y
    # (fractions of W, H), radius (fraction of the short side), strength (0: none)
    shading: float = 0.0  # strength of low-frequency uneven lighting
    blur: float = 0.0  # Gaussian blur sigma in pixels (0: sharp)


def _footprint(p: Placement, s: float) -> tuple[float, float, float, float, float, float]:
    """The placement's oriented box: centre, half length, half width, cos and sin of angle."""
    return (p.cx, p.cy, p.product.length * s / 2, p.product.width * s / 2,
            math.cos(p.angle), math.sin(p.angle))


def _separated(a: tuple, b: tuple, gap: float) -> bool:
    """Separating-axis test for two oriented boxes, demanding `gap` pixels of clearance."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    for _, _, _, _, c, s in (a, b):
        for nx, ny in ((c, s), (-s, c)):  # each box's two edge normals
            ra = a[2] * abs(a[4] * nx + a[5] * ny) + a[3] * abs(-a[5] * nx + a[4] * ny)
            rb = b[2] * abs(b[4] * nx + b[5] * ny) + b[3] * abs(-b[5] * nx + b[4] * ny)
            if abs(dx * nx + dy * ny) >= ra + rb + gap:
                return True
    return False


def arrange(products: list[Product], size: tuple[int, int], rng: np.random.Generator,
            partial: bool = False) -> Scene:
    """A new arrangement and lighting of `products` in a bin image of `size` (W, H)."""
    _check_size(size)
    if not 1 <= len(products) <= 6:
        raise ValueError(f"a bin holds 1 to 6 products, got {len(products)}")
    x0, y0, x1, y1 = bin_floor(size)
    s = min(x1 - x0, y1 - y0)
    gap, edge = max(1.05, 0.02 * s), max(1.0, 0.015 * s)  # >= 1 px: no shared edge pixel
    for _ in range(200):  # restart when a crowded bin paints itself into a corner
        placed: list[Placement] = []
        for product in products:
            for _ in range(100):
                angle = float(rng.uniform(0, 2 * np.pi))
                hl, hw = product.length * s / 2, product.width * s / 2
                ex = hl * abs(math.cos(angle)) + hw * abs(math.sin(angle))  # half extents
                ey = hl * abs(math.sin(angle)) + hw * abs(math.cos(angle))
                if x0 + edge + ex > x1 - edge - ex or y0 + edge + ey > y1 - edge - ey:
                    continue  # too long for the floor at this angle
                cx = rng.uniform(x0 + edge + ex, x1 - edge - ex)
                cy = rng.uniform(y0 + edge + ey, y1 - edge - ey)
                cut = float(rng.uniform(-0.6, 0.6) + rng.integers(2) * np.pi) if partial else None
                p = Placement(product, float(cx), float(cy), angle, cut)
                quad = _footprint(p, s)
                if all(_separated(quad, _footprint(q, s), gap) for q in placed):
                    placed.append(p)
                    break
            else:
                break
        if len(placed) == len(products):
            break
    else:
        raise ValueError(f"{len(products)} products do not fit side by side in a {size} bin")
    return Scene(size=tuple(size), placements=tuple(placed), **light(rng, TIDY_LIGHT))


@dataclass(frozen=True)
class Lighting:
    """The ranges a scene kind's camera and light are drawn from."""

    lamp_jitter: float  # degrees around the lamp's usual place, up-left of the bin
    brightness: tuple[float, float]
    gradient: tuple[float, float]
    vignette: tuple[float, float]
    tint: float  # white balance: each channel within 1 ± this
    noise: tuple[float, float]  # sensor noise sigma


TIDY_LIGHT = Lighting(30, (0.85, 1.1), (0.05, 0.2), (0.15, 0.35), 0.03, (0.006, 0.018))
CLUTTERED_LIGHT = Lighting(60, (0.7, 1.2), (0.05, 0.35), (0.1, 0.4), 0.1, (0.006, 0.03))


def light(rng: np.random.Generator, ranges: Lighting) -> dict[str, Any]:
    """A scene's lamp direction, exposure, white balance and noise: `Scene` fields."""
    angle = np.deg2rad(-120 + rng.uniform(-ranges.lamp_jitter, ranges.lamp_jitter))
    return {
        "to_light": (float(np.cos(angle)), float(np.sin(angle))),
        "brightness": float(rng.uniform(*ranges.brightness)),
        "gradient": float(rng.uniform(*ranges.gradient)),
        "vignette": float(rng.uniform(*ranges.vignette)),
        "tint": tuple(float(t) for t in 1 + rng.uniform(-ranges.tint, ranges.tint, 3)),
        "noise_sigma": float(rng.uniform(*ranges.noise)),
        "noise_seed": int(rng.integers(2**31)),
    }


def _cover(p: Placement, s: float, points: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Which of the coarse floor `points` the placement's oriented box covers.  # [G, G] bool"""
    cx, cy, hl, hw, c, sn = _footprint(p, s)
    dx, dy = points[0] - cx, points[1] - cy
    return (np.abs(dx * c + dy * sn) <= hl) & (np.abs(-dx * sn + dy * c) <= hw)


def arrange_cluttered(products: list[Product], size: tuple[int, int],
                      rng: np.random.Generator) -> Scene:
    """A cluttered arrangement of a random 60-100 % of `products`, stacked in random order.

    Products may touch and overlap. Each new product is placed, among a few random tries, where
    every earlier one keeps at least half of its footprint in view (or, failing that, where the
    least is hidden), so bins look heaped rather than buried; the labels' `MIN_VISIBLE` rule
    then decides exactly which objects count. Lighting varies more than in a tidy scene.
    """
    _check_size(size)
    if not 1 <= len(products) <= 8:
        raise ValueError(f"a cluttered bin holds 1 to 8 products, got {len(products)}")
    x0, y0, x1, y1 = bin_floor(size)
    s = min(x1 - x0, y1 - y0)
    edge = max(1.0, 0.01 * s)
    count = int(rng.integers(math.ceil(0.6 * len(products)), len(products) + 1))
    chosen = [products[int(i)] for i in rng.permutation(len(products))[:count]]
    grid = np.linspace(0, 1, 48)
    points = np.meshgrid(x0 + grid * (x1 - x0), y0 + grid * (y1 - y0))
    placed: list[Placement] = []
    covers: list[np.ndarray] = []  # each placed product's footprint on the coarse grid
    for product in chosen:
        best, best_kept = None, -1.0
        for _ in range(30):
            angle = float(rng.uniform(0, 2 * np.pi))
            hl, hw = product.length * s / 2, product.width * s / 2
            ex = hl * abs(math.cos(angle)) + hw * abs(math.sin(angle))
            ey = hl * abs(math.sin(angle)) + hw * abs(math.cos(angle))
            if x0 + edge + ex > x1 - edge - ex or y0 + edge + ey > y1 - edge - ey:
                continue
            p = Placement(product, float(rng.uniform(x0 + edge + ex, x1 - edge - ex)),
                          float(rng.uniform(y0 + edge + ey, y1 - edge - ey)), angle)
            cover = _cover(p, s, points)
            hidden = np.zeros_like(cover)
            kept = 1.0
            for earlier in reversed(covers):  # what stays in view of each earlier product
                kept = min(kept, (earlier & ~(hidden | cover)).sum() / max(earlier.sum(), 1))
                hidden |= earlier
            if kept > best_kept:
                best, best_kept = (p, cover), kept
            if kept >= 0.5:
                break
        if best is None:
            raise ValueError(f"a product does not fit on the floor of a {size} bin")
        placed.append(best[0])
        covers.append(best[1])
    lighting = light(rng, CLUTTERED_LIGHT)
    spot = (float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9)),
            float(rng.uniform(0.15, 0.45)), float(rng.uniform(0.15, 0.5) * (rng.random() < 0.6)))
    blur = float(rng.uniform(0.5, 1.3) * min(size) / 256 * (rng.random() < 0.3))
    return Scene(size=tuple(size), placements=tuple(placed), **lighting, stacked=True,
                 spot=spot, shading=float(rng.uniform(0, 0.3)), blur=blur)


# ----------------------------------------------------------------------- drawing


def _local(p: Placement, box: tuple[int, int, int, int], shift=(0.0, 0.0)):
    """Pixel centres of `box` (x0, y0, x1, y1) in the product's frame: u along, v across."""
    y, x = np.mgrid[box[1]:box[3], box[0]:box[2]].astype(np.float32) + 0.5
    dx, dy = x - p.cx - shift[0], y - p.cy - shift[1]
    c, s = math.cos(p.angle), math.sin(p.angle)
    return dx * c + dy * s, -dx * s + dy * c


def _crop(p: Placement, s: float, size: tuple[int, int], grow: float) -> tuple[int, ...]:
    r = 0.5 * math.hypot(p.product.length, p.product.width) * s + 2 + grow
    return (max(0, int(p.cx - r)), max(0, int(p.cy - r)),
            min(size[0], int(p.cx + r) + 1), min(size[1], int(p.cy + r) + 1))


def _cut_sdf(p: Placement, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Negative on the kept half of a cut product."""
    return -(u * math.cos(p.cut) + v * math.sin(p.cut))


def _paint(p: Placement, s: float, scene: Scene, size) -> tuple[tuple[int, ...], np.ndarray,
                                                                np.ndarray]:
    """Premultiplied colour [h, w, 3] and alpha [h, w] of one product, with its crop box."""
    box = _crop(p, s, size, 0)
    u, v = _local(p, box)
    c, sn = math.cos(p.angle), math.sin(p.angle)
    lx, ly = scene.to_light
    # Where the lamp sits in the product's frame (for highlights on cylinders).
    light_local = (lx * c + ly * sn, -lx * sn + ly * c)
    layers = PRODUCT_PAINTERS[p.product.kind](p.product, s, u, v, light_local)
    prem = np.zeros(u.shape + (3,), np.float32)
    alpha = np.zeros(u.shape, np.float32)
    for d, colour in layers:
        a = np.clip(0.5 - d, 0, 1)
        prem = prem * (1 - a[..., None]) + colour() * a[..., None]
        alpha = alpha * (1 - a) + a
    if p.cut is not None:
        keep = np.clip(0.5 - _cut_sdf(p, u, v), 0, 1)
        prem, alpha = prem * keep[..., None], alpha * keep
    return box, prem, alpha


def _shadow(p: Placement, s: float, scene: Scene, size) -> tuple[tuple[int, ...], np.ndarray]:
    """Soft drop shadow [h, w] cast away from the lamp."""
    height, blur = 0.07 * s, max(0.8, 0.03 * s)
    shift = (-scene.to_light[0] * height, -scene.to_light[1] * height)
    box = _crop(p, s, size, height + 2 * blur)
    u, v = _local(p, box, shift)
    d = np.min([d for d, _ in PRODUCT_PAINTERS[p.product.kind](p.product, s, u, v, (0, 0))],
               axis=0)
    if p.cut is not None:
        d = np.maximum(d, _cut_sdf(p, u, v))
    return box, 0.6 * np.clip(0.5 - d / (2 * blur), 0, 1) ** 1.5


def draw(scene: Scene, shadows: bool = True, noise: bool = True, omit: int | None = None
         ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pixels [H, W, 3] uint8 of a scene, and each placement's alpha mask [H, W] float32.

    `omit` leaves one placement out (its mask is all zero); with `shadows=False, noise=False`
    the difference of two draws is exactly that product's pixels, which tests use.
    """
    w, h = scene.size
    albedo, wall_idx, edge = background(scene.size)
    img = albedo.copy()
    geo = bin_geometry(scene.size)
    s = min(geo.floor[2] - geo.floor[0], geo.floor[3] - geo.floor[1])
    lx, ly = scene.to_light
    # Walls facing the lamp are bright, the others dim; walls near the lamp shade the floor.
    normals = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float32)
    facing = np.append(0.75 + 0.4 * (normals @ np.array([lx, ly], np.float32)), 1.0)
    img *= facing[wall_idx][..., None]  # index -1 picks the trailing 1.0
    wall_shadow = sum(max(0.0, -n @ (lx, ly)) * np.exp(-edge[i] / (0.05 * s))
                      for i, n in enumerate(normals))
    img *= (1 - 0.3 * np.minimum(wall_shadow, 1))[..., None]
    masks = [np.zeros((h, w), np.float32) for _ in scene.placements]
    drawn = [i for i in range(len(scene.placements)) if i != omit]

    def cast_shadow(i: int) -> None:
        (bx0, by0, bx1, by1), sh = _shadow(scene.placements[i], s, scene, scene.size)
        img[by0:by1, bx0:bx1] *= (1 - sh)[..., None]

    if shadows and not scene.stacked:  # tidy: shadows fall on the floor only
        for i in drawn:
            cast_shadow(i)
    for i in drawn:
        if shadows and scene.stacked:  # a product on top shades the ones below it
            cast_shadow(i)
        (bx0, by0, bx1, by1), prem, alpha = _paint(scene.placements[i], s, scene, scene.size)
        region = img[by0:by1, bx0:bx1]
        region *= (1 - alpha)[..., None]
        region += prem
        for below in masks[:i]:  # the masks stay visible-pixel masks (a no-op when tidy)
            below[by0:by1, bx0:bx1] *= 1 - alpha
        masks[i][by0:by1, bx0:bx1] = alpha
    # Lighting: overall level, a ramp towards the lamp, vignette, white balance.
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    nx, ny = (x + 0.5) / w * 2 - 1, (y + 0.5) / h * 2 - 1
    light = scene.brightness * (1 + scene.gradient * (nx * lx + ny * ly)) * (
        1 - scene.vignette * (nx**2 + ny**2) / 2)
    sx, sy, radius, strength = scene.spot
    if strength > 0:  # a bright spot: a lamp's reflection or a skylight
        d2 = ((x + 0.5 - sx * w) ** 2 + (y + 0.5 - sy * h) ** 2) / (radius * min(w, h)) ** 2
        light *= 1 + strength * np.exp(-d2)
    if scene.shading > 0:  # uneven light: a shelf's shadow, a second lamp
        field = smooth_noise(np.random.default_rng([scene.noise_seed, 0x5AD]), (w, h), 4)
        light *= 1 + scene.shading * field
    img *= light[..., None] * np.array(scene.tint, np.float32)
    if scene.blur > 0:  # camera shake or focus
        img = cv2.GaussianBlur(img, (0, 0), scene.blur)
    if noise:
        rng = np.random.default_rng(scene.noise_seed)
        img += rng.normal(0, scene.noise_sigma, img.shape).astype(np.float32)
        img += rng.normal(0, scene.noise_sigma * 0.5, (h, w, 1)).astype(np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), masks


def labels_from_masks(scene: Scene, masks: list[np.ndarray]) -> np.ndarray:
    """YOLO rows (cls, cx, cy, w, h), normalised, from each mask's alpha >= 0.5 pixels.

    `masks` come from `draw(scene)` with nothing omitted: they hold each object's visible
    pixels. In a tidy scene every mask holds its whole object; in a stacked (cluttered) one an
    object showing less than `MIN_VISIBLE` of its own pixels gets no row.
    """
    w, h = scene.size
    geo = bin_geometry(scene.size)
    s = min(geo.floor[2] - geo.floor[0], geo.floor[3] - geo.floor[1])
    rows = []
    for p, mask in zip(scene.placements, masks, strict=True):
        if scene.stacked:
            visible = mask >= ALPHA_IN
            whole = int((_paint(p, s, scene, scene.size)[2] >= ALPHA_IN).sum())
            if visible.sum() < MIN_VISIBLE * max(whole, 1):
                continue
        else:
            visible = mask >= min(ALPHA_IN, float(mask.max()))
        ys, xs = np.nonzero(visible)
        bx0, bx1, by0, by1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        rows.append([CLASSES.index(p.product.kind), (bx0 + bx1) / 2 / w, (by0 + by1) / 2 / h,
                     (bx1 - bx0) / w, (by1 - by0) / h])
    return np.array(rows, np.float64).reshape(-1, 5)


def render_image(products: list[Product], size: tuple[int, int], rng: np.random.Generator,
                 partial: bool = False, return_masks: bool = False, kind: str = "tidy"):
    """One bin image of `products` in a new arrangement: `(PIL image, labels [k, 5])`.

    Labels are YOLO rows `cls cx cy w h` (normalised): for a tidy scene one per product, in
    `products` order; for a cluttered one (`kind`) one per visible product, bottom to top.
    `partial=True` cuts every product in half (tidy only, see the module docstring).
    `return_masks=True` appends the list of per-placement visible alpha masks [H, W] the boxes
    were computed from.
    """
    if check_scene(kind) == "cluttered":
        if partial:
            raise ValueError("partial products are drawn in tidy scenes only")
        scene = arrange_cluttered(products, size, rng)
    else:
        scene = arrange(products, size, rng, partial=partial)
    pixels, masks = draw(scene)
    labels = labels_from_masks(scene, masks)
    image = Image.fromarray(pixels, "RGB")
    return (image, labels, masks) if return_masks else (image, labels)


# ----------------------------------------------------------------------- corpus


def parse_size(text: str) -> tuple[int, int]:
    """`"256x256"` (or `256×256`, `256X256`) -> (256, 256), checking the allowed range."""
    match = re.fullmatch(r"\s*(\d+)\s*[x×X]\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"image size must look like 256x256 (W x H), got {text!r}")
    size = (int(match[1]), int(match[2]))
    _check_size(size)
    return size


def _check_size(size: tuple[int, int]) -> None:
    if len(size) != 2 or not all(MIN_SIDE <= int(v) <= MAX_SIDE for v in size):
        raise ValueError(f"image size must be W×H with sides {MIN_SIDE}..{MAX_SIDE}, got {size}")


def _prepare(out: Path) -> None:
    """Make `out` ready; refuse to write into a folder that holds anything but a corpus."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not (out / "groups.json").exists():
        raise ValueError(f"{out} is not empty and holds no corpus; choose an empty folder")
    for sub in ("images", "labels"):  # drop a previous corpus' files so none go stale
        (out / sub).mkdir(parents=True, exist_ok=True)
        for f in (out / sub).iterdir():
            if _STEM.match(f.name):
                f.unlink()


def write_corpus(out: Path, groups: int, per_group: int, size: tuple[int, int] = (256, 256),
                 seed: int = 0, first_group: int = 0, progress: bool = False,
                 scene: str = "tidy") -> Path:
    """Render groups `first_group .. first_group+groups-1`, `per_group` images each, into `out`,
    as scenes of kind `scene` (one of `SCENES`).

    Writes `images/g{group:03d}_{index:04d}.png`, `labels/<stem>.txt` (YOLO, 6 decimals),
    `data.yaml` (Ultralytics, absolute `path`) and `groups.json` (group -> products).
    Deterministic: the same arguments give byte-identical files. Returns `out`.
    """
    if groups < 1 or per_group < 1 or first_group < 0 or seed < 0:
        raise ValueError("groups and per_group must be >= 1, first_group and seed >= 0")
    check_scene(scene)
    size = (int(size[0]), int(size[1]))
    _check_size(size)
    out = Path(out)
    _prepare(out)
    catalogue = {}
    bar = tqdm(total=groups * per_group, desc="rendering bins", unit="img", disable=not progress)
    for g in range(first_group, first_group + groups):
        products = make_group(seed, g, scene)
        catalogue[str(g)] = [asdict(p) for p in products]
        for i in range(per_group):
            image, labels = render_image(products, size, np.random.default_rng([seed, g, i, 0x1A]),
                                         kind=scene)
            stem = f"g{g:03d}_{i:04d}"
            image.save(out / "images" / f"{stem}.png", compress_level=1)  # 6x faster than 6
            write_rows(out / "labels" / f"{stem}.txt", labels)
            bar.update()
    bar.close()
    (out / "groups.json").write_text(json.dumps(catalogue, indent=1) + "\n")
    write_data_yaml(out, CLASSES, path=out)
    return out
