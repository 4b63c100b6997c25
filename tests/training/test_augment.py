"""Tests for training/augment.py: identity, determinism, gradients, and what each policy does."""

import pytest
import torch

from training.augment import (
    CUTOUT_RATIO,
    POLICIES,
    brightness,
    contrast,
    cutout,
    diff_augment,
    parse_policy,
    saturation,
    translation,
)

ALL = "color,translation,cutout"


def images(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator) * 2 - 1  # [-1, 1]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_empty_policy_is_identity():
    x = images()
    assert torch.equal(diff_augment(x, "", seeded()), x)
    assert torch.equal(diff_augment(x, " , ", seeded()), x)


@pytest.mark.parametrize("policy", [*POLICIES, ALL])
def test_policies_keep_shape_and_are_deterministic_for_a_seed(policy):
    x = images()
    out = diff_augment(x, policy, seeded(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, diff_augment(x, policy, seeded(0)))
    assert not torch.equal(out, diff_augment(x, policy, seeded(1)))
    assert not torch.equal(out, x)


def test_augmentation_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    diff_augment(images(), ALL, seeded())
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("policy", [*POLICIES, ALL])
def test_gradient_flows_through(policy):
    x = images().requires_grad_(True)
    diff_augment(x, policy, seeded()).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_unknown_policy_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="'colour'.*valid: color, translation, cutout"):
        diff_augment(images(), "colour,cutout", seeded())
    assert parse_policy(" color , cutout ") == ("color", "cutout")


def test_brightness_adds_one_small_offset_per_image():
    x = images()
    shift = brightness(x, seeded()) - x  # [N, 3, H, W]
    per_image = shift.flatten(1)
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image))
    assert per_image.abs().max() <= 0.2  # ±0.1 of the 2-wide range
    assert per_image[:, 0].unique().numel() == x.shape[0]


def test_saturation_keeps_grey_and_mild_factors():
    grey = images()[:, :1].expand(-1, 3, -1, -1)
    torch.testing.assert_close(saturation(grey, seeded()), grey)
    x = images()
    x_grey = x.mean(1, keepdim=True)
    spread = (x - x_grey).flatten(1).norm(dim=1)
    factor = (saturation(x, seeded()) - x_grey).flatten(1).norm(dim=1) / spread
    assert ((factor >= 0.8 - 1e-5) & (factor <= 1.2 + 1e-5)).all()


def test_contrast_keeps_the_mean_with_mild_factors():
    x = images()
    out = contrast(x, seeded())
    torch.testing.assert_close(out.mean((1, 2, 3)), x.mean((1, 2, 3)))
    factor = out.std((1, 2, 3)) / x.std((1, 2, 3))
    assert ((factor >= 0.9 - 1e-5) & (factor <= 1.1 + 1e-5)).all()


def test_translation_moves_content_by_at_most_an_eighth():
    size = 32
    x = torch.zeros(64, 3, size, size)
    x[:, :, 16, 16] = 1.0  # one bright pixel in the middle
    out = translation(x, seeded())
    assert torch.equal(out.sum((1, 2, 3)), torch.full((64,), 3.0))  # moved, not lost
    rows, cols = (out[:, 0] == 1).nonzero()[:, 1:].T
    assert (rows - 16).abs().max() == size // 8 and (cols - 16).abs().max() == size // 8
    assert len({(r, c) for r, c in zip(rows.tolist(), cols.tolist(), strict=True)}) > 10


def test_translation_fills_with_zeros():
    x = torch.ones(32, 3, 32, 32)
    out = translation(x, seeded())
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert (out == 0).any()


def test_cutout_erases_one_square_of_a_quarter_side():
    size = 32
    side = int(size * CUTOUT_RATIO)
    out = cutout(torch.ones(64, 3, size, size), seeded())
    erased = out[:, 0] == 0  # [N, H, W], same for every channel
    assert torch.equal(out == 0, erased.unsqueeze(1).expand_as(out))
    counts = erased.flatten(1).sum(1)
    assert (counts > 0).all() and (counts <= side * side).all()
    assert (counts == side * side).any()  # squares away from the border are whole
    for mask in erased:  # each erased region is a rectangle
        rows, cols = mask.nonzero().T
        height = rows.max() - rows.min() + 1
        width = cols.max() - cols.min() + 1
        assert height * width == mask.sum() and height <= side and width <= side


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cpu_generator_gives_the_same_augmentation_on_cuda():
    x = images()
    on_cpu = diff_augment(x, ALL, seeded())
    on_cuda = diff_augment(x.cuda(), ALL, seeded())
    assert on_cuda.device.type == "cuda"
    torch.testing.assert_close(on_cuda.cpu(), on_cpu)
