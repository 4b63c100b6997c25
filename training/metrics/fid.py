"""Fréchet Inception Distance, only when the user supplies Inception-v3 weights.

Weights cannot be downloaded at run time; pass the path of a torchvision `inception_v3`
state dict (e.g. `IMAGENET1K_V1` saved with `torch.save(model.state_dict(), path)`). Features:
the 2048-d average-pool output at 299×299. FID numbers from other implementations (the
TF-ported `pt_inception` weights) differ somewhat; compare FIDs made with the same weights.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from training.devices import pick_device


@functools.cache
def _inception(path: str, device: str) -> torch.nn.Module:
    from torchvision.models import inception_v3

    if not Path(path).is_file():
        raise FileNotFoundError(f"Inception weights {path} do not exist")
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} is not a torchvision inception_v3 state dict: "
                         f"{str(e).splitlines()[0]}") from None
    model.fc = torch.nn.Identity()
    return model.eval().to(device)


@torch.no_grad()
def inception_features(images: np.ndarray, weights: str | Path, batch_size: int = 32) -> np.ndarray:
    """2048-d pool features of uint8 images [N, H, W, 3].  # [N, 2048] float64"""
    device = pick_device()
    model = _inception(str(weights), device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[start : start + batch_size])).to(device)
        x = x.permute(0, 3, 1, 2).float().div(255)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        out.append(model((x - mean) / std).double().cpu().numpy())
    return np.concatenate(out)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||² + Tr(Sa + Sb - 2 (Sa Sb)^½), with the root from symmetric eigensystems."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((Sa Sb)^½) = Tr((Sa^½ Sb Sa^½)^½); both factors are symmetric PSD, so eigh is stable.
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ sb @ root_a)
    trace_root = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * trace_root)


def compute(real_images: np.ndarray, fake_images: np.ndarray, weights: str | Path
            ) -> dict[str, float]:
    """FID between two uint8 image sets (each at least 2 images; hundreds for a stable value)."""
    if len(real_images) < 2 or len(fake_images) < 2:
        raise ValueError("FID needs at least 2 real and 2 generated images")
    return {"fid": frechet_distance(inception_features(real_images, weights),
                                    inception_features(fake_images, weights))}
