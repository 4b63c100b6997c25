"""Tests for training/losses.py: known loss values and the penalties' gradient-norm math."""

import math

import pytest
import torch
from torch import nn

from training.losses import (
    LOSS_MODES,
    critic_loss,
    dragan_penalty,
    generator_loss,
    gradient_penalty,
    penalty,
)
from training.networks import Critic

SHAPE = (4, 3, 8, 8)


def scores(value: float, n: int = 4) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.float64)


class LinearCritic(nn.Module):
    """f(x) = <w, x>: its input gradient is w everywhere, so ||grad|| = ||w|| exactly."""

    def __init__(self, norm: float) -> None:
        super().__init__()
        w = torch.randn(SHAPE[1:], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        self.w = nn.Parameter(w * norm / w.norm())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1)


class QuadraticCritic(nn.Module):
    """f(x) = ||x||^2 / 2: its input gradient is x, so the norm depends on where it is measured."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x**2).flatten(1).sum(1)


@pytest.mark.parametrize(
    "mode, real, fake, critic_value, generator_value",
    [
        ("hinge", 2.0, -2.0, 0.0, 2.0),
        ("hinge", 0.0, 0.0, 2.0, 0.0),
        ("wgan", 3.0, 1.0, -2.0, -1.0),
        ("lsgan", 1.0, 0.0, 0.0, 1.0),
        ("lsgan", 0.0, 1.0, 2.0, 0.0),
        ("gan", 0.0, 0.0, 2 * math.log(2), math.log(2)),
        ("gan", 30.0, -30.0, 2 * math.log1p(math.exp(-30)), math.log1p(math.exp(30))),
    ],
)
def test_losses_have_known_values(mode, real, fake, critic_value, generator_value):
    assert critic_loss(mode, scores(real), scores(fake)).item() == pytest.approx(critic_value)
    assert generator_loss(mode, scores(fake)).item() == pytest.approx(generator_value)


@pytest.mark.parametrize("mode", LOSS_MODES)
def test_losses_push_scores_the_right_way(mode):
    real = torch.full((4,), 0.5, requires_grad=True)
    fake = torch.full((4,), 0.5, requires_grad=True)
    critic_loss(mode, real, fake).backward()
    # Descending the critic loss raises real scores and lowers fake ones.
    assert (real.grad < 0).all() and (fake.grad > 0).all()
    fake.grad = None
    generator_loss(mode, fake).backward()
    assert (fake.grad < 0).all()  # the generator raises its fake scores


def test_unknown_mode_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="valid: gan, lsgan, hinge, wgan"):
        critic_loss("wasserstein", scores(0), scores(0))
    with pytest.raises(ValueError, match="valid: gan, lsgan, hinge, wgan"):
        generator_loss("bce", scores(0))


@pytest.mark.parametrize("w_norm", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("name", ["wgan-gp", "dragan"])
def test_penalty_of_a_linear_critic_is_exact(name, w_norm):
    critic = LinearCritic(w_norm)
    real = torch.randn(SHAPE, dtype=torch.float64)
    fake = torch.randn(SHAPE, dtype=torch.float64)
    result = penalty(name, critic, real, fake, weight=10.0)
    assert result.grad_norm.item() == pytest.approx(w_norm, rel=1e-12)
    assert result.penalty.item() == pytest.approx(10.0 * (w_norm - 1) ** 2, abs=1e-12)
    # create_graph: the penalty trains the critic, d/dw 10 (||w|| - 1)^2 = 20 (||w|| - 1) w/||w||.
    result.penalty.backward()
    expected = 20.0 * (w_norm - 1) * critic.w.detach() / w_norm
    torch.testing.assert_close(critic.w.grad, expected)


def test_gradient_penalty_is_measured_at_interpolates():
    # Quadratic critic, real = 0, fake = 1: the interpolate a*1 has gradient norm a*sqrt(D).
    real = torch.zeros(SHAPE, dtype=torch.float64)
    fake = torch.ones(SHAPE, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    alpha = torch.rand(SHAPE[0], dtype=torch.float32, generator=generator).double()
    norms = alpha * math.sqrt(math.prod(SHAPE[1:]))
    result = gradient_penalty(QuadraticCritic(), real, fake, 2.0, torch.Generator().manual_seed(3))
    assert result.grad_norm.item() == pytest.approx(norms.mean().item())
    assert result.penalty.item() == pytest.approx((2.0 * (norms - 1) ** 2).mean().item())


def test_dragan_perturbs_around_the_real_samples():
    # Quadratic critic: grad = x^, with x^ between real and real + 0.5 std(real) u.
    real = torch.randn(SHAPE, dtype=torch.float64)
    result = dragan_penalty(QuadraticCritic(), real, 1.0, torch.Generator().manual_seed(0))
    low = real.flatten(1).norm(dim=1).mean().item()
    assert 0 < abs(result.grad_norm.item() - low) < 0.5 * real.std().item() * math.sqrt(192)


@pytest.mark.parametrize("name", ["wgan-gp", "dragan"])
def test_penalties_are_reproducible_from_the_generator_alone(name):
    real = torch.randn(SHAPE)
    fake = torch.randn(SHAPE)
    critic = QuadraticCritic()

    def run(seed: int):
        torch.manual_seed(seed + 100)  # the global RNG must not matter
        return penalty(name, critic, real, fake, 10.0, torch.Generator().manual_seed(seed))

    assert run(0).penalty.item() == run(0).penalty.item()
    assert run(0).penalty.item() != run(1).penalty.item()


def test_penalty_trains_a_real_critic():
    torch.manual_seed(0)
    critic = Critic(resolution=32, base_channels=4, max_channels=16, norm="layer")
    real, fake = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    result = penalty("wgan-gp", critic, real, fake, 10.0)
    result.penalty.backward()  # double backward through conv, GroupNorm, LeakyReLU
    convs = [m for m in critic.modules() if isinstance(m, nn.Conv2d)]
    assert all(conv.weight.grad.abs().sum() > 0 for conv in convs)
    assert critic.head.bias.grad is None  # a constant offset does not change input gradients
    assert result.grad_norm > 0 and not result.grad_norm.requires_grad


def test_no_penalty_and_unknown_penalty():
    real = torch.randn(SHAPE)
    result = penalty("none", QuadraticCritic(), real, real, 10.0)
    assert result.penalty.item() == 0 and result.grad_norm is None
    with pytest.raises(ValueError, match="valid: none, wgan-gp, dragan"):
        penalty("gp", QuadraticCritic(), real, real, 10.0)
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(QuadraticCritic(), real, real[:2], 10.0)
