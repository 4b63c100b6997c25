"""Offline image features for distribution metrics: a fixed, randomly initialised CNN.

Inception weights cannot be downloaded here, so KID and density/coverage use a small
convolutional network whose weights come from a fixed seed: the same features on every
machine, with no file to ship. Random convolutional features are a known, weaker stand-in
for trained ones (they respond to colour, texture and layout, not semantics); compare numbers
only between runs that use the same `FEATURES_VERSION`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.devices import pick_device

FEATURES_VERSION = "random-cnn-v1"  # name recorded in reports; change it if the network changes
INPUT_SIDE = 64  # images are squashed to this square
SEED = 20211  # fixed: changing it changes every reported number
CHANNELS = (32, 64, 128, 256)


@functools.cache
def _network(device: str) -> nn.Module:
    """Four 3×3 stride-2 conv blocks with ReLU; output: mean and std of each last channel."""
    generator = torch.Generator().manual_seed(SEED)
    layers: list[nn.Module] = []
    c_in = 3
    for c_out in CHANNELS:
        conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        with torch.no_grad():
            # Kaiming-normal from our own generator: torch's default init uses the global RNG.
            conv.weight.normal_(0, (2.0 / (c_in * 9)) ** 0.5, generator=generator)
            conv.bias.zero_()
        layers += [conv, nn.ReLU()]
        c_in = c_out
    return nn.Sequential(*layers).eval().to(device)


@torch.no_grad()
def image_features(images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Features of uint8 images [N, H, W, 3] (any H, W).  # [N, 2 * CHANNELS[-1]] float64"""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} "
                         f"{images.shape}")
    device = pick_device()
    net = _network(device)
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).to(device)
        x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1)  # [n, 3, H, W] in [-1, 1]
        x = F.interpolate(x, size=(INPUT_SIDE, INPUT_SIDE), mode="area")
        y = net(x)  # [n, C, 4, 4]
        out.append(torch.cat([y.mean((2, 3)), y.std((2, 3))], 1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2 * CHANNELS[-1]))
