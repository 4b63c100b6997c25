"""Tests for service/core/fidelity.py on rendered bins (`training.render`).

Each case fits on 10 renders of one product group and judges 20 held-out renders of it and
corrupted copies of them. Run with `-s` to see the score distributions.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from service.core.fidelity import FIDELITY_WHITE_BELOW, FidelityCalibration
from training.render import make_group, render_image

FIT, HELD_OUT = 10, 20


def _renders(kind: str, size: int, group: int = 0, n: int = FIT + HELD_OUT) -> list[np.ndarray]:
    products = make_group(0, group, kind)
    return [np.asarray(render_image(products, (size, size), np.random.default_rng([group, i, 7]),
                                    kind=kind)[0]) for i in range(n)]


def _blur(im: np.ndarray) -> np.ndarray:
    # σ 1.5 px at 256²; at 64² σ 0.75 (σ 3 at 256-equivalent: 0.375 px is below a pixel)
    return cv2.GaussianBlur(im, (0, 0), 1.5 if im.shape[0] >= 256 else 0.75)


def _smear(im: np.ndarray) -> np.ndarray:
    h, w = im.shape[:2]
    small = cv2.resize(im, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _checker(im: np.ndarray) -> np.ndarray:
    """Add a ±12 grey-level period-2 checker."""
    h, w = im.shape[:2]
    pattern = np.where((np.arange(h)[:, None] + np.arange(w)[None]) % 2 == 0, 12, -12)
    return np.clip(im.astype(np.int16) + pattern[..., None], 0, 255).astype(np.uint8)


def _phase_gain(im: np.ndarray) -> np.ndarray:
    """A transposed-conv checkerboard: each 2×2 phase has its own gain (±5 %)."""
    h, w = im.shape[:2]
    gain = np.tile(np.array([[1.08, 0.95], [0.97, 1.0]]), (h // 2, w // 2))
    return np.clip(im * gain[..., None], 0, 255).astype(np.uint8)


CORRUPTIONS = {"blur": _blur, "smear": _smear, "checker": _checker, "phase_gain": _phase_gain}


@pytest.fixture(scope="module")
def cases() -> dict[tuple[str, int], tuple[FidelityCalibration, list[np.ndarray]]]:
    out = {}
    for kind in ("tidy", "cluttered"):
        for size in (64, 256):
            images = _renders(kind, size)
            out[kind, size] = FidelityCalibration.fit(images[:FIT]), images[FIT:]
    return out


@pytest.mark.parametrize("kind", ["tidy", "cluttered"])
@pytest.mark.parametrize("size", [64, 256])
def test_real_pass_and_corruptions_fail(cases, kind: str, size: int) -> None:
    cal, held_out = cases[kind, size]
    real = cal.score(held_out)
    print(f"\n{kind} {size}: real min {real.min():.2f} median {np.median(real):.2f}")
    assert (real >= FIDELITY_WHITE_BELOW).mean() >= 0.95
    for name, corrupt in CORRUPTIONS.items():
        bad = [corrupt(im) for im in held_out]
        judged = cal.score_with_reasons(bad)
        scores = np.array([s for s, _ in judged])
        print(f"  {name:10s} max {scores.max():.2f} median {np.median(scores):.2f}")
        assert (scores < FIDELITY_WHITE_BELOW).mean() >= 0.95, name
        # A per-phase gain also makes colours the photos lack: either measure may name it.
        want = {"blur": {"sharpness"}, "smear": {"sharpness"}, "checker": {"checker"},
                "phase_gain": {"checker", "palette"}}[name]
        assert all(r in want for s, r in judged if s < FIDELITY_WHITE_BELOW), name


def test_measures_move_the_right_way(cases) -> None:
    cal, held_out = cases["tidy", 256]
    real, blurred, checkered = (cal.measures(ims) for ims in (
        held_out, [_blur(im) for im in held_out], [_checker(im) for im in held_out]))
    assert real.shape == (HELD_OUT, 3) and np.isfinite(real).all()
    assert (blurred[:, 0] < real[:, 0] - 1).all()  # sharpness drops by > 1 (log ratio)
    assert (checkered[:, 1] > real[:, 1] + 2).all()  # checker energy grows > e² times


def _hue_turned(im: np.ndarray) -> np.ndarray:
    """Every colour's hue turned by 120°: the same scene in colours the photos never show."""
    hsv = cv2.cvtColor(im, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + 60) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _colour_noise(im: np.ndarray) -> np.ndarray:
    """Products painted over with saturated colour noise, as an untrained GAN paints them:
    pixels far from the floor's colour get a random red, green or cyan cast."""
    rng = np.random.default_rng(0)
    floor = np.median(im.reshape(-1, 3), axis=0)
    product = np.abs(im.astype(np.float32) - floor).max(axis=2) > 40
    cast = np.array([[230, 30, 40], [40, 220, 60], [30, 220, 230]], np.float32)
    paint = cast[rng.integers(0, 3, im.shape[:2])]
    out = im.astype(np.float32)
    out[product] = 0.4 * out[product] + 0.6 * paint[product]
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["tidy", "cluttered"])
@pytest.mark.parametrize("size", [64, 256])
def test_colours_the_photos_never_show_are_white(cases, kind: str, size: int) -> None:
    cal, held_out = cases[kind, size]
    for corrupt in (_hue_turned, _colour_noise):
        judged = cal.score_with_reasons([corrupt(im) for im in held_out])
        print(f"\n{kind} {size} {corrupt.__name__}: max {max(s for s, _ in judged):.2f}")
        assert np.mean([s < FIDELITY_WHITE_BELOW for s, _ in judged]) >= 0.9, corrupt.__name__
        assert all(r == "palette" for s, r in judged if s < FIDELITY_WHITE_BELOW)


def test_a_card_without_a_palette_still_scores(cases) -> None:
    cal, held_out = cases["tidy", 64]
    old = {k: v for k, v in cal.to_dict().items() if not k.startswith("palette")}
    again = FidelityCalibration.from_dict(old)
    assert not again.known and np.isnan(again.measures(held_out)[:, 2]).all()
    assert (again.score(held_out) >= FIDELITY_WHITE_BELOW).mean() >= 0.95


def test_working_scale(cases) -> None:
    # Photos 64²: a held-out 64² photo upscaled to 256² is judged at 64 and still passes
    # (nearest and bicubic; a bilinear ×4 upscale is softer and is judged smeared).
    cal64, held64 = cases["tidy", 64]
    assert cal64.side_for((256, 256, 3)) == 64
    for interp in (cv2.INTER_NEAREST, cv2.INTER_CUBIC):
        up = [cv2.resize(im, (256, 256), interpolation=interp) for im in held64]
        assert (cal64.score(up) >= FIDELITY_WHITE_BELOW).mean() >= 0.95, interp
    np.testing.assert_allclose(cal64.score([cv2.resize(im, (256, 256),
                                                       interpolation=cv2.INTER_NEAREST)
                                            for im in held64]), cal64.score(held64), atol=1e-6)
    # Photos 256²: a native 64² image is judged against the photos shrunk to 64 and passes...
    cal256, _ = cases["tidy", 256]
    assert cal256.side_for((64, 64, 3)) == 64 and cal256.side_for((96, 128, 3)) == 64
    assert (cal256.score(held64) >= FIDELITY_WHITE_BELOW).mean() >= 0.95
    # ...but the same content served upscaled to 256² is smeared at 256 and fails.
    assert (cal256.score(up) < FIDELITY_WHITE_BELOW).all()


def test_fit_on_large_mixed_sizes() -> None:
    products = make_group(0, 1)
    photos = [np.asarray(render_image(products, size, np.random.default_rng(i))[0])
              for i, size in enumerate([(640, 480), (512, 384), (480, 360)])]
    cal = FidelityCalibration.fit(photos)
    assert cal.work_side == 256 and sorted(cal.sharp_ref) == ["128", "256", "32", "64"]
    assert (cal.score(photos) == 1).all()  # each photo is within the photos' own range


def test_round_trip_and_errors(cases) -> None:
    cal, held_out = cases["cluttered", 64]
    again = FidelityCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal and sorted(again.known) == sorted(cal.sharp_ref)
    for side, known in cal.known.items():
        np.testing.assert_array_equal(again.known[side], known)
    np.testing.assert_array_equal(again.score(held_out), cal.score(held_out))
    with pytest.raises(ValueError, match="at least 2"):
        FidelityCalibration.fit(held_out[:1])
    with pytest.raises(ValueError, match="uint8"):
        cal.score([held_out[0].astype(np.float32)])


@pytest.mark.parametrize("size", [64, 256])
def test_palette_leaves_out_the_boxes_of_other_skus_products(cases, size: int) -> None:
    # A product of another SKU (here: magenta, a colour the photos never show) makes an image
    # white for palette, unless its box is marked foreign (compose's distractors).
    cal, held_out = cases["tidy", size]
    lo, hi = size * 3 // 8, size * 5 // 8
    pasted = []
    for im in held_out:
        out = im.copy()
        out[lo:hi, lo:hi] = (230, 20, 230)
        pasted.append(out)
    white = np.array(cal.score(pasted)) < FIDELITY_WHITE_BELOW
    box = np.array([[lo, lo, hi, hi]], np.float32)
    spared = np.array(cal.score(pasted, [box] * len(pasted))) < FIDELITY_WHITE_BELOW
    real = np.array(cal.score(held_out)) < FIDELITY_WHITE_BELOW
    assert white.mean() >= 0.9 and spared.mean() <= real.mean()
