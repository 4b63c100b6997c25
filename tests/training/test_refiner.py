"""The compose recipe's refiner: identity at start, training, resume, self-regularisation, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.core.repository import CHECKPOINTS_DIR, LATEST_CHECKPOINT
from training import refiner as refiner_module
from training.checkpoint import load_checkpoint
from training.refiner import (
    PARITY_LIMIT,
    Refiner,
    RefinerConfig,
    export_refiner,
    refiner_from_state,
    refiner_profile,
    train_refiner,
)


def smooth_images(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Random smooth uint8 images [n, h, w, 3]: a colour gradient plus a little noise."""
    ys, xs = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(40, 200, (n, 1, 1, 3))
    slope = rng.uniform(-60, 60, (n, 1, 1, 3, 2))
    image = base + slope[..., 0] * ys[None, ..., None] + slope[..., 1] * xs[None, ..., None]
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def paste_composites(k: int, rng: np.random.Generator, h: int = 40, w: int = 48):
    """Smooth bins, each with one flat pasted rectangle (no shadow, no noise) and its mask."""
    images = smooth_images(rng, k, h, w)
    masks = np.zeros((k, h, w), np.float32)
    for i in range(k):
        top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
        images[i, top : top + h // 3, left : left + w // 3] = rng.integers(0, 256, 3)
        masks[i, top : top + h // 3, left : left + w // 3] = 1.0
    return images, masks


@pytest.fixture(scope="module")
def real() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [*smooth_images(rng, 3, 36, 40), *smooth_images(rng, 2, 48, 33)]  # sizes differ


def to_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_untrained_refiner_is_the_identity_at_any_size():
    refiner = Refiner(channels=8, blocks=3).eval()
    for h, w in ((37, 53), (16, 16), (64, 20)):
        composite = torch.rand(2, 3, h, w) * 2 - 1
        mask = (torch.rand(2, 1, h, w) > 0.5).float()
        with torch.no_grad():
            out = refiner(composite, mask)
        assert out.shape == composite.shape
        assert torch.equal(out, composite)


def test_profiles_and_config_checks():
    assert refiner_profile("tiny").crop == 32 and refiner_profile("tiny").channels == 8
    with pytest.raises(ValueError, match="default.*tiny"):
        refiner_profile("huge")
    with pytest.raises(ValueError, match="crop"):
        RefinerConfig(crop=8)
    with pytest.raises(ValueError, match="valid: color"):
        RefinerConfig(augment="colour")
    cfg = refiner_profile("default")
    assert RefinerConfig.from_dict(cfg.to_dict()) == cfg


def test_training_changes_weights_checkpoints_and_resumes(tmp_path, real):
    cfg = refiner_profile("tiny").replace(steps=2)
    calls: list[tuple[int, int]] = []
    first = train_refiner(real, paste_composites, cfg, tmp_path, progress=False,
                          on_step=lambda step, total, metrics: calls.append((step, total)))
    assert first["step"] == 2 and calls == [(1, 2), (2, 2)]
    assert {"critic_loss", "wasserstein", "l1"} <= set(first["metrics"])
    fresh = Refiner(cfg.channels, cfg.blocks).state_dict()
    assert not torch.equal(first["refiner"]["tail.1.weight"], fresh["tail.1.weight"])
    saved = load_checkpoint(tmp_path / CHECKPOINTS_DIR / LATEST_CHECKPOINT)
    assert saved["step"] == 2 and "opt_refiner" in saved

    # A longer run in the same folder continues from step 2, it does not start over.
    calls.clear()
    second = train_refiner(real, paste_composites, cfg.replace(steps=4), tmp_path, progress=False,
                           on_step=lambda step, total, metrics: calls.append((step, total)))
    assert calls == [(3, 4), (4, 4)] and second["step"] == 4
    assert load_checkpoint(tmp_path / CHECKPOINTS_DIR / LATEST_CHECKPOINT)["step"] == 4

    # A finished run returns at once: it never even asks for composites.
    def no_composites(k, rng):
        raise AssertionError("a finished run must not train")

    again = train_refiner(real, no_composites, cfg.replace(steps=4), tmp_path, progress=False)
    assert again["step"] == 4
    for name, value in second["refiner"].items():
        assert torch.equal(again["refiner"][name], value)


def test_init_starts_from_a_base_and_shapes_must_match(tmp_path, real):
    cfg = refiner_profile("tiny").replace(steps=2)
    base = train_refiner(real, paste_composites, cfg, tmp_path / "base", progress=False)
    tuned = train_refiner(real, paste_composites, cfg.replace(steps=0), tmp_path / "tune",
                          init=base, progress=False)
    assert tuned["step"] == 0
    assert torch.equal(tuned["refiner"]["tail.1.weight"], base["refiner"]["tail.1.weight"])
    with pytest.raises(ValueError, match="channels"):
        train_refiner(real, paste_composites, cfg.replace(channels=4), tmp_path / "bad",
                      init=base, progress=False)


def test_real_photos_smaller_than_the_crop_are_refused(tmp_path):
    small = list(smooth_images(np.random.default_rng(0), 2, 20, 40))
    with pytest.raises(ValueError, match="crop=32"):
        train_refiner(small, paste_composites, refiner_profile("tiny"), tmp_path, progress=False)


def refined_grey_levels(state: dict, rng_seed: int = 5) -> float:
    """Max |refined - composite| in uint8 grey levels, on fresh composites."""
    images, masks = paste_composites(4, np.random.default_rng(rng_seed))
    composite = to_nchw(images)
    with torch.no_grad():
        out = refiner_from_state(state)(composite, torch.from_numpy(masks)[:, None])
    return float((out - composite).abs().max()) * 127.5


def test_l1_self_regularisation_keeps_the_composite(tmp_path, real):
    # A high learning rate makes the adversarial term move the output a lot within a few steps;
    # a huge L1 weight must hold it to the composite, without it the output drifts.
    cfg = refiner_profile("tiny").replace(steps=6, lr=5e-3)
    free = train_refiner(real, paste_composites, cfg.replace(l1_weight=0.0), tmp_path / "free",
                         progress=False)
    held = train_refiner(real, paste_composites, cfg.replace(l1_weight=1e4), tmp_path / "held",
                         progress=False)
    assert refined_grey_levels(free) > 10
    assert refined_grey_levels(held) < 5


def test_export_parity_at_two_sizes(tmp_path, real):
    state = train_refiner(real, paste_composites, refiner_profile("tiny").replace(steps=2),
                          tmp_path / "run", progress=False)
    path = tmp_path / "refiner.onnx"
    parity = export_refiner(state, path)
    assert path.is_file() and parity <= PARITY_LIMIT
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no tmp left


def test_export_rejected_above_parity_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(refiner_module, "PARITY_LIMIT", -1.0)  # no difference can pass
    state = {"config": refiner_profile("tiny").to_dict(),
             "refiner": Refiner(8, 2).state_dict()}
    with pytest.raises(ValueError, match="parity"):
        export_refiner(state, tmp_path / "refiner.onnx")
    assert list(tmp_path.iterdir()) == []
