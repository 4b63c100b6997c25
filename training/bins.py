"""The empty bin of the built-in corpus: its geometry (rim, walls, floor) and its unlit
plastic texture, the same physical bin in every image (`training.render` lights it and puts
products on its floor)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Bin:
    outer: tuple[float, float, float, float]  # x0, y0, x1, y1 of the bin's outer rim
    rim: tuple[float, float, float, float]  # inner edge of the rim = top of the inner walls
    floor: tuple[float, float, float, float]


def bin_geometry(size: tuple[int, int]) -> Bin:
    w, h = size
    m = min(w, h)
    pad, rim, wall = 0.025 * m, 0.03 * m, 0.085 * m

    def inset(d: float) -> tuple[float, float, float, float]:
        return (d, d, w - d, h - d)

    return Bin(inset(pad), inset(pad + rim), inset(pad + rim + wall))


def bin_floor(size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The bin floor `(x0, y0, x1, y1)` in pixels for an image of `size` (W, H)."""
    return bin_geometry(size).floor


def _round_box(x, y, rect, radius):
    """SDF of a rounded rectangle given as (x0, y0, x1, y1)."""
    cx, cy = (rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2
    qx = np.abs(x - cx) - (rect[2] - rect[0]) / 2 + radius
    qy = np.abs(y - cy) - (rect[3] - rect[1]) / 2 + radius
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - radius


def smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random grid upsampled bicubically.  # [H, W]"""
    w, h = size
    grid = rng.uniform(0, 255, (max(2, cells * h // max(w, h)), max(2, cells * w // max(w, h))))
    img = Image.fromarray(grid.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(img, np.float32) / 127.5 - 1


@lru_cache(maxsize=4)
def background(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unlit bin: albedo [H, W, 3], wall index [H, W] (-1 off walls), floor edge distances.

    The bin is the same physical bin in every image, so its texture is fixed (seeded) and cached.
    """
    w, h = size
    geo, m = bin_geometry(size), min(w, h)
    rng = np.random.default_rng(20211)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    plastic = np.array([0.30, 0.38, 0.47], np.float32)  # grey-blue tote
    albedo = np.empty((h, w, 3), np.float32)
    # Outside the bin: a dark conveyor with a little texture.
    albedo[:] = np.array([0.16, 0.16, 0.17], np.float32)
    albedo *= (1 + 0.06 * smooth_noise(rng, size, 24))[..., None]

    d_outer = _round_box(x, y, geo.outer, 0.06 * m)
    d_rim = _round_box(x, y, geo.rim, 0.035 * m)
    d_floor = _round_box(x, y, geo.floor, 0.02 * m)
    inside = np.clip(0.5 - d_outer, 0, 1)[..., None]
    # Rim: the wall's flat top, brighter, with a highlight on its inner lip.
    lip = np.exp(-((d_rim + 0.15 * 0.03 * m) / max(0.6, 0.006 * m)) ** 2)
    rim_col = plastic * 1.25 + 0.08 * lip[..., None]
    # Inner walls: four trapezoids between rim and floor; t is depth (0 at rim, 1 at floor).
    fx0, fy0, fx1, fy1 = geo.floor
    rx0, ry0, rx1, ry1 = geo.rim
    depth = np.stack([(x - rx0) / (fx0 - rx0), (y - ry0) / (fy0 - ry0),
                      (rx1 - x) / (rx1 - fx1), (ry1 - y) / (ry1 - fy1)])
    wall_idx = np.argmin(depth, axis=0).astype(np.int8)  # 0 left, 1 top, 2 right, 3 bottom
    t = np.clip(depth.min(axis=0), 0, 1)
    along = np.where(wall_idx % 2 == 0, y, x)  # coordinate along each wall, for moulded ribs
    period = max(4.0, 0.045 * m)
    ribs = 1 + 0.05 * np.sin(2 * np.pi * along / period) * (m >= 96)
    wall_col = plastic * ((1.05 - 0.35 * t) * ribs)[..., None]
    # Floor: mottled plastic with a faint moulded grid, scuffs and dust.
    floor_col = plastic * 0.92 * (1 + 0.07 * smooth_noise(rng, size, 12)
                                  + 0.03 * smooth_noise(rng, size, 48))[..., None]
    cell = max(6.0, 0.16 * m)
    gx, gy = np.abs(((x - fx0) % cell) - cell / 2), np.abs(((y - fy0) % cell) - cell / 2)
    groove = np.exp(-((cell / 2 - np.maximum(gx, gy)) / max(0.5, 0.004 * m)) ** 2)
    floor_col *= (1 - 0.10 * groove)[..., None]
    for _ in range(int(rng.integers(6, 12))):  # scuffs: faint short pale streaks
        sx, sy = rng.uniform(fx0, fx1), rng.uniform(fy0, fy1)
        ang, ln = rng.uniform(0, np.pi), rng.uniform(0.03, 0.12) * m
        u = (x - sx) * np.cos(ang) + (y - sy) * np.sin(ang)
        v = -(x - sx) * np.sin(ang) + (y - sy) * np.cos(ang)
        d = np.hypot(np.maximum(np.abs(u) - ln / 2, 0), v) - max(0.4, 0.003 * m)
        floor_col += (0.035 * np.clip(0.5 - d, 0, 1))[..., None]
    dust = rng.random((h, w)) < 0.004
    floor_col[dust] *= 1.25

    a_floor = np.clip(0.5 - d_floor, 0, 1)[..., None]
    a_rim = np.clip(0.5 - d_rim, 0, 1)[..., None]
    bin_col = rim_col * (1 - a_rim) + (wall_col * (1 - a_floor) + floor_col * a_floor) * a_rim
    albedo = albedo * (1 - inside) + bin_col * inside
    # Ambient occlusion where floor meets walls.
    edge = np.stack([x - fx0, y - fy0, fx1 - x, fy1 - y])  # distance to each floor edge
    ao = 1 - 0.25 * np.exp(-np.clip(edge.min(axis=0), 0, None) / (0.03 * m))
    albedo[..., :] *= np.where(a_floor[..., 0] > 0, ao, 1)[..., None]
    wall_idx[(a_rim[..., 0] < 0.5) | (a_floor[..., 0] > 0.5)] = -1
    return albedo, wall_idx, np.where(a_floor[..., 0] > 0, edge, np.inf).astype(np.float32)
