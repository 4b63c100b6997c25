"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for training on ten images.

The training loop augments both the real and the generated images the critic sees, with the same
policy, so the critic cannot memorise ten photos, while the generator still learns un-augmented
images (the augmentations are differentiable, so its gradient passes through them).

Images are [N, C, H, W] in [-1, 1]. Each augmentation is a pure function `fn(x, generator) -> x`
drawing its random parameters (one set per image) from the given `torch.Generator` only, never
the global RNG, so a seeded run is exactly reproducible. The draws happen on the generator's
device and move to x's device, so a CPU generator gives the same augmentations on any device.

Colour changes are deliberately mild (DiffAugment's are ±0.5 brightness, 0-2× saturation): a
product's colour is part of its identity, and the generator must not learn shifted colours.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Augmentation = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]

BRIGHTNESS = 0.1  # ± fraction of the intensity range (±0.2 on the [-1, 1] scale)
SATURATION = (0.8, 1.2)  # factor range around the per-pixel grey
CONTRAST = (0.9, 1.1)  # factor range around the per-image mean
TRANSLATION_RATIO = 1 / 8  # largest shift, as a fraction of the side
CUTOUT_RATIO = 1 / 4  # side of the erased square, as a fraction of the image side


def _per_image_uniform(
    x: torch.Tensor, low: float, high: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One U(low, high) value per image, shaped [N, 1, 1, 1] to broadcast over x."""
    device = generator.device if generator is not None else x.device
    u = torch.rand((x.shape[0], 1, 1, 1), generator=generator, device=device)
    return (low + (high - low) * u).to(device=x.device, dtype=x.dtype)


def _per_image_randint(
    x: torch.Tensor, low: int, high: int, generator: torch.Generator | None
) -> torch.Tensor:
    """One integer in [low, high) per image, shaped [N, 1, 1]."""
    device = generator.device if generator is not None else x.device
    values = torch.randint(low, high, (x.shape[0], 1, 1), generator=generator, device=device)
    return values.to(x.device)


def brightness(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Add one offset per image, within ±BRIGHTNESS of the range."""
    shift = 2 * BRIGHTNESS  # the [-1, 1] range is 2 wide
    return x + _per_image_uniform(x, -shift, shift, generator)


def saturation(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Scale each pixel's distance from its grey level by one factor per image."""
    grey = x.mean(dim=1, keepdim=True)  # [N, 1, H, W]
    return (x - grey) * _per_image_uniform(x, *SATURATION, generator) + grey


def contrast(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Scale each image's distance from its mean by one factor per image."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # [N, 1, 1, 1]
    return (x - mean) * _per_image_uniform(x, *CONTRAST, generator) + mean


def translation(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Shift each image by up to TRANSLATION_RATIO of its side, filling with zeros (mid-grey)."""
    n, _, h, w = x.shape
    max_dy, max_dx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = _per_image_randint(x, -max_dy, max_dy + 1, generator)  # [N, 1, 1]
    dx = _per_image_randint(x, -max_dx, max_dx + 1, generator)
    # Read output pixel (i, j) from input (i + dy, j + dx) of a 1-pixel zero-padded copy; indices
    # past the image clamp onto the zero border.
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy + 1).clamp(0, h + 1)  # [N, H, 1]
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx + 1).clamp(0, w + 1)  # [N, 1, W]
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # [N, H+2, W+2, C]
    return padded[batch, rows, cols].permute(0, 3, 1, 2).contiguous()  # [N, C, H, W]


def cutout(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Zero (mid-grey) one square of side CUTOUT_RATIO per image, centred anywhere in it."""
    _, _, h, w = x.shape
    size_h, size_w = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    # Centres as in DiffAugment; squares near the border are clipped by it.
    top = _per_image_randint(x, 0, h + (1 - size_h % 2), generator) - size_h // 2  # [N, 1, 1]
    left = _per_image_randint(x, 0, w + (1 - size_w % 2), generator) - size_w // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
    return x * (~inside).unsqueeze(1).to(x.dtype)  # mask [N, 1, H, W]


POLICIES: dict[str, tuple[Augmentation, ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def parse_policy(policy: str) -> tuple[str, ...]:
    """Split "color,translation,cutout" into names, checking each; "" is no augmentation."""
    names = tuple(name.strip() for name in policy.split(",") if name.strip())
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ValueError(
            f"unknown augmentation {', '.join(map(repr, unknown))}; valid: {', '.join(POLICIES)}"
        )
    return names


def diff_augment(
    x: torch.Tensor, policy: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply the comma-separated policies in order to x [N, C, H, W]; differentiable in x.

    Randomness comes only from `generator` (the global RNG when it is None).
    """
    for name in parse_policy(policy):
        for augmentation in POLICIES[name]:
            x = augmentation(x, generator)
    return x
