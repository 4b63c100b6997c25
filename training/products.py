"""The four product classes of the built-in corpus, drawn with signed distance functions.

Each painter takes a product, the pixel scale and local coordinates (u along the product's long
axis, v across it, both centred on the product) and returns layers of (SDF, colour thunk), drawn
in order by `training.render`. The shapes are top views of the thesis' classes: a tube with a
crimped end and cap, a bottle with neck and cap, a can with rim and top, a spray can with nozzle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("tube", "bottle", "can", "spray")


@dataclass(frozen=True)
class Product:
    """One physical product: class, size (fractions of the floor's short side), colours."""

    kind: str  # one of CLASSES
    length: float  # along the long axis (cans: the diameter)
    width: float  # across (cans: the diameter)
    body: tuple[float, float, float]  # RGB in [0, 1]
    accent: tuple[float, float, float]  # label print
    cap: tuple[float, float, float]
    stripes: int  # 1-3 printed stripes, to tell products of one class apart


# Size ranges (length, width) and colour palettes per class; bodies first, then accents, caps.
_SIZES = {"tube": ((0.50, 0.64), (0.15, 0.19)), "bottle": ((0.46, 0.60), (0.19, 0.25)),
          "can": ((0.24, 0.31), None), "spray": ((0.52, 0.66), (0.16, 0.21))}
_BODIES = {
    "tube": [(0.95, 0.95, 0.93), (0.85, 0.2, 0.2), (0.2, 0.45, 0.85), (0.3, 0.7, 0.4),
             (0.95, 0.78, 0.25)],
    "bottle": [(0.35, 0.6, 0.9), (0.4, 0.75, 0.45), (0.8, 0.5, 0.18), (0.92, 0.92, 0.95),
               (0.9, 0.5, 0.65)],
    "can": [(0.8, 0.1, 0.12), (0.1, 0.3, 0.75), (0.1, 0.55, 0.25), (0.08, 0.08, 0.09),
            (0.95, 0.8, 0.1), (0.85, 0.85, 0.88)],
    "spray": [(0.1, 0.1, 0.12), (0.95, 0.95, 0.95), (0.95, 0.45, 0.1), (0.5, 0.25, 0.6),
              (0.6, 0.8, 0.15)],
}
_ACCENTS = [(0.98, 0.98, 0.97), (0.95, 0.85, 0.15), (0.9, 0.15, 0.15), (0.15, 0.3, 0.8),
            (0.1, 0.1, 0.1), (0.2, 0.65, 0.3), (0.95, 0.55, 0.1)]
_METAL = np.array([0.74, 0.75, 0.78], np.float32)


def _pick(rng: np.random.Generator, palette, avoid=None) -> tuple[float, float, float]:
    """A palette colour (jittered), different enough from `avoid` to be visible on it."""
    options = [c for c in palette if avoid is None or np.abs(np.subtract(c, avoid)).sum() > 0.6]
    base = np.array(options[int(rng.integers(len(options)))])
    return tuple(round(float(c), 3) for c in np.clip(base + rng.uniform(-0.04, 0.04, 3), 0, 1))


def make_product(kind: str, scale: float, rng: np.random.Generator) -> Product:
    """A random product of class `kind`, `scale` times its class' usual size."""
    (l0, l1), widths = _SIZES[kind]
    length = rng.uniform(l0, l1) * scale
    width = length if widths is None else rng.uniform(*widths) * scale
    body = _pick(rng, _BODIES[kind])
    return Product(kind, round(float(length), 4), round(float(width), 4), body,
                   _pick(rng, _ACCENTS, body), _pick(rng, _ACCENTS, body), int(rng.integers(1, 4)))


def _rbox(u, v, cu, hu, hv, r):
    """SDF of a rounded box centred at (cu, 0) with half extents (hu, hv), corner radius r."""
    qx, qy = np.abs(u - cu) - hu + r, np.abs(v) - hv + r
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r


def _trap(u, v, u0, u1, h0, h1):
    """SDF of a symmetric trapezoid from u0 (half-width h0) to u1 (half-width h1)."""
    he, px, py = (u1 - u0) / 2, np.abs(v), u - (u0 + u1) / 2
    k2x, k2y = h1 - h0, 2 * he
    cax, cay = px - np.minimum(px, np.where(py < 0, h0, h1)), np.abs(py) - he
    t = np.clip(((h1 - px) * k2x + (he - py) * k2y) / (k2x**2 + k2y**2), 0, 1)
    cbx, cby = px - h1 + k2x * t, py - he + k2y * t
    sign = np.where((cbx < 0) & (cay < 0), -1.0, 1.0)
    return sign * np.sqrt(np.minimum(cax**2 + cay**2, cbx**2 + cby**2))


def _cylinder(v, hw, light_v, shine, sharp):
    """Diffuse and specular shading across a cylinder lying along u."""
    t = np.clip(v / hw, -1, 1)
    diffuse = 0.5 + 0.38 * np.sqrt(1 - t**2) + 0.12 * t * light_v
    return diffuse, shine * np.exp(-(((t - 0.5 * light_v) / sharp) ** 2))


def _col(rgb, shade, highlight=0.0):
    return np.asarray(rgb, np.float32) * shade[..., None] + np.asarray(highlight)[..., None]


def _tube(p, s, u, v, light):
    """Toothpaste tube: crimped flat end, tapering body, shoulder, screw cap."""
    length, hw = p.length * s, p.width * s / 2
    a, b, crimp, cap = -length / 2, length / 2, 0.08 * length, 0.13 * length
    u_sh = b - cap - 0.06 * length
    dif, hi = _cylinder(v, hw, light[1], 0.25, 0.35)
    body = _trap(u, v, a + 0.8 * crimp, u_sh, hw, 0.8 * hw)
    band = np.maximum(body, np.abs(u + 0.02 * length) - 0.17 * length)
    layers = [
        (_rbox(u, v, a + crimp / 2, crimp / 2, hw, 0.1 * hw),
         lambda: _col(p.body, 0.8 + 0.12 * np.sign(np.sin(v * np.pi / max(0.8, 0.1 * hw))))),
        (body, lambda: _col(p.body, dif, hi)),
        (band, lambda: _col(p.accent, dif, hi)),
        (_trap(u, v, u_sh - 0.5, u_sh + 0.06 * length, 0.8 * hw, 0.45 * hw),
         lambda: _col(p.body, dif * 0.9, hi)),
        (_rbox(u, v, b - cap / 2, cap / 2, 0.47 * hw, 0.2 * hw), lambda: _col(p.cap, dif, hi)),
    ]
    for k in range(p.stripes):  # thin printed lines across the label band
        uk = -0.15 * length + (k + 1) * 0.26 * length / (p.stripes + 1)
        layers.append((np.maximum(band, np.abs(u - uk) - 0.012 * length - 0.3),
                       lambda: _col(p.cap, dif, hi)))
    return layers


def _bottle(p, s, u, v, light):
    """Plastic bottle lying down: glossy body, label, shoulder, neck, ribbed cap."""
    length, hw = p.length * s, p.width * s / 2
    a, b, cap, neck = -length / 2, length / 2, 0.1 * length, 0.07 * length
    u_sh = b - cap - neck - 0.14 * length
    dif, hi = _cylinder(v, hw, light[1], 0.55, 0.12)
    body = _rbox(u, v, (a + u_sh) / 2, (u_sh - a) / 2, hw, 0.35 * hw)
    label = np.maximum(body, np.abs(u - (a + 0.36 * length)) - 0.19 * length)
    layers = [
        (body, lambda: _col(p.body, 0.15 + 0.85 * dif, hi)),
        (label, lambda: _col(p.accent, dif, 0.4 * hi)),
        (_trap(u, v, u_sh - 0.5, u_sh + 0.14 * length, 0.98 * hw, 0.36 * hw),
         lambda: _col(p.body, 0.15 + 0.85 * dif, hi)),
        (_rbox(u, v, b - cap - neck / 2 + 0.5, neck / 2 + 0.5, 0.36 * hw, 0.05 * hw),
         lambda: _col(p.body, 0.1 + 0.8 * dif, hi)),
        (_rbox(u, v, b - cap / 2, cap / 2, 0.5 * hw, 0.15 * hw),
         lambda: _col(p.cap, dif * (0.9 + 0.1 * np.sin(v * 2 * np.pi / max(1.0, 0.15 * hw))))),
    ]
    for k in range(p.stripes):  # "text" lines along the label
        vk = (k + 1) / (p.stripes + 1) * 1.2 * hw - 0.6 * hw
        layers.append((np.maximum(label, np.maximum(np.abs(v - vk) - 0.05 * hw - 0.25,
                                                    np.abs(u - (a + 0.36 * length))
                                                    - 0.12 * length)),
                       lambda: _col(p.cap, dif * 0.8)))
    return layers


def _can(p, s, u, v, light):
    """Drink can from above: coloured body edge, bright rim, lid with score line and tab."""
    r = p.length * s / 2
    lit = 0.85 + 0.15 * (u * light[0] + v * light[1]) / r
    score = _rbox(u, v, -0.3 * r, 0.26 * r, 0.2 * r, 0.15 * r)
    return [
        (np.hypot(u, v) - r, lambda: _col(p.body, lit * 0.9)),
        (np.abs(np.hypot(u, v) - 0.91 * r) - 0.025 * r - 0.2, lambda: _col(p.accent, lit)),
        (np.hypot(u, v) - 0.84 * r, lambda: _col(_METAL, lit * 1.15)),
        (np.hypot(u, v) - 0.73 * r, lambda: _col(_METAL, lit * (0.75 + 0.1 * np.hypot(u, v) / r))),
        (np.abs(score) - 0.03 * r - 0.2, lambda: _col(_METAL, lit * 0.55)),
        (_rbox(u, v, 0.2 * r, 0.3 * r, 0.17 * r, 0.16 * r), lambda: _col(_METAL, lit * 1.1)),
        (_rbox(u, v, 0.32 * r, 0.1 * r, 0.08 * r, 0.07 * r), lambda: _col(_METAL, lit * 0.45)),
        (np.hypot(u, v) - 0.07 * r, lambda: _col(_METAL, lit * 0.95)),
    ]


def _spray(p, s, u, v, light):
    """Aerosol can lying down: metal base, printed body, domed shoulder, cap with nozzle."""
    length, hw = p.length * s, p.width * s / 2
    a, b, cap = -length / 2, length / 2, 0.2 * length
    u_d = b - cap - 0.06 * length
    dif, hi = _cylinder(v, hw, light[1], 0.6, 0.1)
    body = _rbox(u, v, (a + 0.03 * length + u_d) / 2, (u_d - a - 0.03 * length) / 2, hw, 0.1 * hw)
    label = np.maximum(body, np.maximum(np.abs(v) - 0.42 * hw,
                                        np.abs(u - (a + u_d) / 2) - 0.3 * length))
    layers = [
        (_rbox(u, v, a + 0.025 * length, 0.025 * length, 0.95 * hw, 0.1 * hw),
         lambda: _col(_METAL, dif, hi)),
        (body, lambda: _col(p.body, dif, hi)),
        (label, lambda: _col(p.accent, dif, 0.5 * hi)),
        (_trap(u, v, u_d - 0.5, u_d + 0.08 * length, 0.97 * hw, 0.7 * hw),
         lambda: _col(_METAL, dif, hi)),
        (_rbox(u, v, b - cap / 2, cap / 2, 0.74 * hw, 0.3 * hw), lambda: _col(p.cap, dif, hi)),
        (_rbox(u, v, b - 0.06 * length, 0.035 * length, 0.18 * hw, 0.05 * hw),
         lambda: _col((0.08, 0.08, 0.08), dif)),
    ]
    for k in range(p.stripes):  # printed bands across the body
        uk = a + 0.1 * length + k * 0.05 * length
        layers.append((np.maximum(body, np.abs(u - uk) - 0.012 * length - 0.3),
                       lambda: _col(p.cap, dif, hi)))
    return layers


PRODUCT_PAINTERS = {"tube": _tube, "bottle": _bottle, "can": _can, "spray": _spray}
