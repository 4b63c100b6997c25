"""Adversarial losses (gan, lsgan, hinge, wgan) and critic penalties (none, wgan-gp, dragan).

The modes follow the thesis' set (which follows LynnHo's DCGAN-LSGAN-WGAN-GP-DRAGAN code):

- gan: non-saturating BCE on logits; lsgan: least squares to 1 / 0; hinge: SAGAN's hinge (the
  generator maximises the fake score); wgan: score differences.
- wgan-gp (Gulrajani et al.): weight * mean((||grad f(x^)|| - 1)^2) at x^ = real + a (fake - real),
  a ~ U(0, 1) per sample.
- dragan (Kodali et al.): the same penalty at points near the real data,
  x^ = real + a * 0.5 * std(real) * u, u ~ U(0, 1) per element, a ~ U(0, 1) per sample.

Scores are the critic's raw outputs, shape [N]. Randomness comes only from the `torch.Generator`
passed in (or the global one when it is None), so training can be reproduced exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LOSS_MODES = ("gan", "lsgan", "hinge", "wgan")
PENALTIES = ("none", "wgan-gp", "dragan")


def _check_mode(mode: str) -> None:
    if mode not in LOSS_MODES:
        raise ValueError(f"unknown loss mode {mode!r}; valid: {', '.join(LOSS_MODES)}")


def critic_loss(mode: str, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Scalar loss the critic minimises, given its scores on real and on generated images."""
    _check_mode(mode)
    if mode == "gan":
        # BCE with logits against 1 for real and 0 for fake, written stably with softplus.
        return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()
    if mode == "lsgan":
        return ((real_scores - 1) ** 2).mean() + (fake_scores**2).mean()
    if mode == "hinge":
        return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
    return fake_scores.mean() - real_scores.mean()  # wgan


def generator_loss(mode: str, fake_scores: torch.Tensor) -> torch.Tensor:
    """Scalar loss the generator minimises, given the critic's scores on generated images."""
    _check_mode(mode)
    if mode == "gan":
        return F.softplus(-fake_scores).mean()  # non-saturating: -log sigmoid(D(G(z)))
    if mode == "lsgan":
        return ((fake_scores - 1) ** 2).mean()
    return -fake_scores.mean()  # hinge and wgan


@dataclass(frozen=True)
class PenaltyResult:
    """A penalty term to add to the critic loss, and the gradient norm it measured.

    `grad_norm` is the detached mean over samples of ||grad_x f(x^)||, for logging (None when no
    penalty was computed). It stays a tensor so logging does not force a device sync each step.
    """

    penalty: torch.Tensor
    grad_norm: torch.Tensor | None


def _uniform(
    shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    # Draw on the generator's own device, then move: a CPU generator then gives the same numbers
    # whatever device the data is on.
    device = generator.device if generator is not None else like.device
    values = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return values.to(device=like.device, dtype=like.dtype)


def _penalty_at(critic: nn.Module, points: torch.Tensor, weight: float) -> PenaltyResult:
    points = points.detach().requires_grad_(True)
    scores = critic(points)
    (grad,) = torch.autograd.grad(
        outputs=scores.sum(), inputs=points, create_graph=True
    )  # [N, C, H, W]; create_graph so the penalty trains the critic
    # At least float32, so a half-precision gradient cannot overflow in the sum of squares.
    grad = grad.to(torch.promote_types(grad.dtype, torch.float32))
    norms = grad.flatten(1).norm(2, dim=1)  # [N]
    value = weight * ((norms - 1) ** 2).mean()
    return PenaltyResult(penalty=value, grad_norm=norms.detach().mean())


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float,
    generator: torch.Generator | None = None,
) -> PenaltyResult:
    """WGAN-GP: weight * mean((||grad f(x^)||_2 - 1)^2) on random interpolates of real and fake."""
    if real.shape != fake.shape:
        raise ValueError(
            f"real and fake batches must have the same shape, got {list(real.shape)} "
            f"and {list(fake.shape)}"
        )
    alpha = _uniform((real.shape[0],) + (1,) * (real.ndim - 1), real, generator)  # [N, 1, 1, 1]
    points = real.detach() + alpha * (fake.detach() - real.detach())
    return _penalty_at(critic, points, weight)


def dragan_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    weight: float,
    generator: torch.Generator | None = None,
) -> PenaltyResult:
    """DRAGAN: the same penalty at random points between real samples and noisy copies of them."""
    real = real.detach()
    noise = _uniform(tuple(real.shape), real, generator)
    perturbed = real + 0.5 * real.std() * noise
    alpha = _uniform((real.shape[0],) + (1,) * (real.ndim - 1), real, generator)  # [N, 1, 1, 1]
    points = real + alpha * (perturbed - real)
    return _penalty_at(critic, points, weight)


def penalty(
    name: str,
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float,
    generator: torch.Generator | None = None,
) -> PenaltyResult:
    """Dispatch on the penalty name: "none", "wgan-gp" or "dragan"."""
    if name == "none":
        return PenaltyResult(penalty=real.new_zeros(()), grad_norm=None)
    if name == "wgan-gp":
        return gradient_penalty(critic, real, fake, weight, generator)
    if name == "dragan":
        return dragan_penalty(critic, real, weight, generator)
    raise ValueError(f"unknown penalty {name!r}; valid: {', '.join(PENALTIES)}")
