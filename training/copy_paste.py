"""The copy-paste baseline: new bin images made by cutting labelled objects out of real photos
and pasting them at new places on empty bins.

It is what a generator has to beat in `bench/downstream.py`: the cheapest way to turn ten
labelled photos into more training images. Each new image takes the objects of one real photo
(so a bin holds one product set, as in the photos), turns each by a multiple of 90° and
maybe mirrors it, and pastes it at a random free spot on the floor of an empty bin drawn by the
built-in renderer with its own random lighting. Turns and mirrors keep a tight axis-aligned
box tight, so labels stay exact; free angles would need masks the labels do not carry.

An object is cut out by its label box. Its alpha (which pixels of the box are object, not
floor) comes from its colour distance to the floor just outside the box, so the source bin's
floor does not come along as a visible rectangle. The pasted label is the box itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from service.core.datasets import image_files, read_image
from service.core.yolo import pixel_boxes, read_names, read_rows, write_data_yaml, write_rows
from training.bins import bin_floor
from training.render import TIDY_LIGHT, Scene, draw, light

RING = 2  # px of floor around a box that tell its colour
ALPHA_LOW, ALPHA_HIGH = 10.0, 28.0  # colour distance (0-255) ramp from floor to object
MAX_TRIES = 200  # random spots tried per object before giving up on the image


@dataclass(frozen=True)
class Cutout:
    """One labelled object cut from a photo: its box pixels and how much of each is object."""

    cls: int
    pixels: np.ndarray  # [h, w, 3] float32, 0-255
    alpha: np.ndarray  # [h, w] float32 in [0, 1]


def cut_out(image: np.ndarray, rows: np.ndarray) -> list[Cutout]:
    """Cut every labelled object out of `image` (uint8 [H, W, 3]) by its YOLO row."""
    h, w = image.shape[:2]
    pixels = image.astype(np.float32)
    cutouts = []
    for row, (x0, y0, x1, y1) in zip(rows, pixel_boxes(rows, (h, w)), strict=True):
        if x1 <= x0 or y1 <= y0:
            continue
        # The floor's colour: median of a thin ring just outside the box.
        ox0, oy0 = max(x0 - RING, 0), max(y0 - RING, 0)
        ox1, oy1 = min(x1 + RING, w), min(y1 + RING, h)
        outer = pixels[oy0:oy1, ox0:ox1]
        ring = np.ones(outer.shape[:2], bool)
        ring[y0 - oy0 : y1 - oy0, x0 - ox0 : x1 - ox0] = False
        box = pixels[y0:y1, x0:x1]
        if ring.any():
            floor = np.median(outer[ring], axis=0)
            distance = np.abs(box - floor).max(axis=2)
            alpha = ((distance - ALPHA_LOW) / (ALPHA_HIGH - ALPHA_LOW)).clip(0, 1)
        else:  # the box fills the image: nothing tells the floor apart, keep it whole
            alpha = np.ones(box.shape[:2], np.float32)
        cutouts.append(Cutout(int(row[0]), box.copy(), alpha.astype(np.float32)))
    return cutouts


def turn(cutout: Cutout, quarter_turns: int, mirror: bool) -> Cutout:
    """The cut-out turned by `quarter_turns` × 90° and optionally mirrored left-right."""
    pixels, alpha = np.rot90(cutout.pixels, quarter_turns), np.rot90(cutout.alpha, quarter_turns)
    if mirror:
        pixels, alpha = pixels[:, ::-1], alpha[:, ::-1]
    return Cutout(cutout.cls, np.ascontiguousarray(pixels), np.ascontiguousarray(alpha))


def empty_bin(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An empty bin, uint8 [H, W, 3], lit and noised like the renderer's photos."""
    scene = Scene(size=(int(size[0]), int(size[1])), placements=(), **light(rng, TIDY_LIGHT))
    return draw(scene)[0]


def paste(
    background: np.ndarray, cutouts: list[Cutout], rng: np.random.Generator, gap: int = 1
) -> tuple[np.ndarray, np.ndarray] | None:
    """Paste `cutouts` at random free spots of the bin floor in `background`.

    Returns the image (uint8) and its YOLO rows [k, 5], or None when some object found no
    spot in `MAX_TRIES` tries (boxes keep `gap` px apart, like the renderer's products).
    """
    h, w = background.shape[:2]
    floor = bin_floor((w, h))
    fx0, fy0 = int(np.ceil(floor[0])), int(np.ceil(floor[1]))
    fx1, fy1 = int(np.floor(floor[2])), int(np.floor(floor[3]))
    image = background.astype(np.float32)
    placed: list[tuple[int, int, int, int]] = []
    rows = []
    for cutout in cutouts:
        ch, cw = cutout.alpha.shape
        if cw > fx1 - fx0 or ch > fy1 - fy0:
            return None
        for _ in range(MAX_TRIES):
            x0 = int(rng.integers(fx0, fx1 - cw + 1))
            y0 = int(rng.integers(fy0, fy1 - ch + 1))
            box = (x0, y0, x0 + cw, y0 + ch)
            if all(box[0] >= q[2] + gap or q[0] >= box[2] + gap or box[1] >= q[3] + gap
                   or q[1] >= box[3] + gap for q in placed):
                break
        else:
            return None
        placed.append(box)
        a = cutout.alpha[..., None]
        region = image[y0 : y0 + ch, x0 : x0 + cw]
        region *= 1 - a
        region += a * cutout.pixels
        rows.append([cutout.cls, (x0 + cw / 2) / w, (y0 + ch / 2) / h, cw / w, ch / h])
    pixels = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return pixels, np.array(rows, np.float64).reshape(-1, 5)


def write_copy_paste(real: Path, out: Path, n: int, seed: int = 0) -> Path:
    """Write `n` copy-paste images made from the YOLO folder `real` as a YOLO folder `out`.

    `out/images/cp_NNNN.png`, `out/labels/cp_NNNN.txt` and `out/data.yaml` (the class names
    of `real`). Deterministic for a given `seed`. Returns `out`.
    """
    real, out = Path(real), Path(out)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    files = image_files(real / "images")
    sources = []
    for file in files:
        image = read_image(file)
        cutouts = cut_out(image, read_rows(real / "labels" / f"{file.stem}.txt", missing_ok=True))
        if cutouts:
            sources.append((image.shape[:2], cutouts))
    if not sources:
        raise ValueError(f"no labelled objects in {real}: copy-paste needs YOLO labels")
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    written = tries = 0
    while written < n:
        tries += 1
        if tries > 50 * n:
            raise ValueError(f"the objects of {real} do not fit on an empty bin floor")
        (h, w), cutouts = sources[int(rng.integers(len(sources)))]
        turned = [turn(c, int(rng.integers(4)), bool(rng.integers(2))) for c in cutouts]
        turned.sort(key=lambda c: -c.alpha.size)  # big ones first: they are hardest to fit
        result = paste(empty_bin((w, h), rng), turned, rng)
        if result is None:
            continue  # crowded bin; draw another layout
        pixels, rows = result
        stem = f"cp_{written:04d}"
        Image.fromarray(pixels).save(out / "images" / f"{stem}.png", compress_level=1)
        write_rows(out / "labels" / f"{stem}.txt", rows)
        written += 1
    write_data_yaml(out, read_names(real, required=False) or [])
    return out
