"""The thesis' DCGAN / WGAN-GP generator and critic, parametrised by resolution and width.

One definition serves the tiny test profile (32², a few channels) and the thesis' 256² model:

- Generator, 256², base 64: z [N, 128] -> ConvT 1×1 -> 4×4×512, then ConvT 4×4 stride 2 +
  BatchNorm + ReLU blocks with 512 (8²), 512 (16²), 256 (32²), 128 (64²), 64 (128²) channels,
  and a last ConvT to 3 channels + Tanh at 256².
- Critic, 256², base 64: Conv 4×4 stride 2 + LeakyReLU 0.2 blocks with 64, 128, 256, 512, 512,
  512 channels down to 4², normalisation from the 2nd block (LayerNorm for WGAN-GP, BatchNorm for
  the plain GAN), then Conv 4×4 stride 1 to one score per image.

This module imports no project code, so checkpoints, export and tests can build the networks from
their constructor arguments alone (see `Generator.init_args` / `Critic.init_args`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

MIN_RESOLUTION = 32
MAX_RESOLUTION = 256
NORMS = ("layer", "batch", "none")


def _check_resolution(resolution: int) -> None:
    is_power_of_two = resolution > 0 and resolution & (resolution - 1) == 0
    if not is_power_of_two or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(
            f"resolution must be a power of two from {MIN_RESOLUTION} to {MAX_RESOLUTION}, "
            f"got {resolution}"
        )


def _check_widths(base_channels: int, max_channels: int) -> None:
    if base_channels < 1 or max_channels < 1:
        raise ValueError(
            f"base_channels and max_channels must be positive, got {base_channels} "
            f"and {max_channels}"
        )


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation: convolutions N(0, 0.02), normalisation scales N(1, 0.02), biases 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters in `module` (only those with requires_grad when `trainable_only`)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def generator_channels(resolution: int, base_channels: int, max_channels: int) -> tuple[int, ...]:
    """Channels of the 4² projection and of each upsampling block, ending with the 3 RGB ones.

    The block producing resolution r has min(max, base * (R/2) / r) channels, so the block just
    before the output (r = R/2) has `base_channels`, and widths double towards 4².
    """
    _check_resolution(resolution)
    _check_widths(base_channels, max_channels)
    sizes = [4 * 2**i for i in range((resolution // 4).bit_length() - 1)]  # 4, 8, ..., R/2
    return (*(min(max_channels, base_channels * (resolution // 2) // r) for r in sizes), 3)


def critic_channels(resolution: int, base_channels: int, max_channels: int) -> tuple[int, ...]:
    """Channels of each stride-2 critic block, from R² down to 4² (block i: base * 2**i)."""
    _check_resolution(resolution)
    _check_widths(base_channels, max_channels)
    blocks = (resolution // 4).bit_length() - 1  # log2(R / 4)
    return tuple(min(max_channels, base_channels * 2**i) for i in range(blocks))


class Generator(nn.Module):
    """z [N, z_dim] -> image [N, 3, R, R] in [-1, 1] (the thesis' ConvTranspose stack)."""

    def __init__(
        self,
        z_dim: int = 128,
        resolution: int = 256,
        base_channels: int = 64,
        max_channels: int = 512,
    ) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be positive, got {z_dim}")
        self.z_dim = z_dim
        self.resolution = resolution
        self.base_channels = base_channels
        self.max_channels = max_channels
        self.channels = generator_channels(resolution, base_channels, max_channels)

        # Bias-free convolutions before BatchNorm: its shift makes a bias redundant.
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, self.channels[0], 4, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(self.channels[0]),
            nn.ReLU(inplace=True),
        ]  # [N, z_dim, 1, 1] -> [N, C0, 4, 4]
        for c_in, c_out in zip(self.channels[:-2], self.channels[1:-1], strict=True):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]  # doubles the resolution
        layers += [
            nn.ConvTranspose2d(self.channels[-2], 3, 4, stride=2, padding=1),
            nn.Tanh(),
        ]  # [N, base, R/2, R/2] -> [N, 3, R, R]
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def init_args(self) -> dict[str, Any]:
        """Constructor arguments, for checkpoints: `Generator(**g.init_args())` rebuilds it."""
        return {
            "z_dim": self.z_dim,
            "resolution": self.resolution,
            "base_channels": self.base_channels,
            "max_channels": self.max_channels,
        }

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # Shape checks in Python would be frozen into (or warn during) an ONNX trace.
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            if z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"expected z of shape [N, {self.z_dim}], got {list(z.shape)}")
        return self.net(z[:, :, None, None])  # [N, 3, R, R]


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "layer":
        # GroupNorm with one group normalises each sample over (C, H, W), like LayerNorm, with a
        # per-channel affine; unlike BatchNorm it keeps samples independent, which the WGAN-GP
        # penalty (per-sample gradients) needs.
        return nn.GroupNorm(1, channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class Critic(nn.Module):
    """Image [N, 3, R, R] -> one score per image [N] (the thesis' strided-convolution critic)."""

    def __init__(
        self,
        resolution: int = 256,
        base_channels: int = 64,
        max_channels: int = 512,
        norm: str = "layer",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown critic norm {norm!r}; valid: {', '.join(NORMS)}")
        self.resolution = resolution
        self.base_channels = base_channels
        self.max_channels = max_channels
        self.norm = norm
        self.channels = critic_channels(resolution, base_channels, max_channels)

        blocks = []
        c_in = 3
        for i, c_out in enumerate(self.channels):
            normalised = i > 0 and norm != "none"
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=not normalised),
                    _norm_layer(norm if i > 0 else "none", c_out),
                    nn.LeakyReLU(0.2, inplace=True),
                )
            )  # halves the resolution
            c_in = c_out
        # Separate blocks so fine-tuning can freeze the first k (FreezeD).
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c_in, 1, 4, stride=1, padding=0)  # [N, C, 4, 4] -> [N, 1, 1, 1]
        init_dcgan_weights(self)

    def init_args(self) -> dict[str, Any]:
        """Constructor arguments, for checkpoints: `Critic(**c.init_args())` rebuilds it."""
        return {
            "resolution": self.resolution,
            "base_channels": self.base_channels,
            "max_channels": self.max_channels,
            "norm": self.norm,
        }

    def freeze_blocks(self, k: int) -> None:
        """Freeze the first k blocks (requires_grad False) and unfreeze the rest and the head.

        Unfreezing the rest makes the call idempotent: `freeze_blocks(0)` undoes any earlier one.
        BatchNorm running statistics of frozen blocks still update in train mode.
        """
        if not 0 <= k <= len(self.blocks):
            raise ValueError(f"can freeze 0 to {len(self.blocks)} critic blocks, got {k}")
        for i, block in enumerate(self.blocks):
            block.requires_grad_(i >= k)
        self.head.requires_grad_(True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Activation of the last block, [N, C, 4, 4]."""
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten()  # [N]
