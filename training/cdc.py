"""Cross-domain distance consistency (CDC; Ojha et al. 2021, "Few-shot Image Generation via
Cross-domain Correspondence") for fine-tuning a generator on a handful of images.

Ten images let the generator collapse onto them: different latents end up drawing the same few
training pictures. CDC keeps the *relative* distances between samples that the pretrained
(source) generator had: for a batch of latents z_1..z_N, each sample's cosine similarities to the
other N-1 samples, softmaxed over the row, form a distribution; the adapted generator's
distribution must stay close to the source's (KL divergence source -> adapted), at every feature
layer. Two latents that drew different arrangements before the fine-tune keep drawing different
ones after it, while the critic moves their look to the new products.

Features are the generator's block outputs: after each ConvT + BatchNorm + ReLU block (4², 8²,
..., R/2) and the Tanh image, read by walking `Generator.net`, so `Generator.forward` (and its
ONNX export) stays untouched. The source is a frozen copy of the pretrained generator run with
batch statistics like the adapted one (BatchNorm in train mode with momentum 0, so its running
statistics never move): identical generators give identical features and a loss of exactly 0.

The paper also restricts the critic to patches for latents far from ten "anchor" latents; the
image-level critic here is left as is (DiffAugment and FreezeD guard it instead).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from training.networks import Generator


def frozen_source(generator: Generator) -> Generator:
    """A frozen copy of `generator` that normalises with batch statistics and never updates them."""
    source = copy.deepcopy(generator).requires_grad_(False)
    source.train()  # batch statistics, as the adapted generator's training forward uses
    for module in source.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    return source


def generator_features(
    generator: Generator, z: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The generated images and the block outputs CDC compares.

    Returns (images [N, 3, R, R], [block output [N, C_k, r_k, r_k] for each block, images]).
    Equal to `generator(z)` for the images; one forward pass gives both.
    """
    if z.ndim != 2 or z.shape[1] != generator.z_dim:
        raise ValueError(f"expected z of shape [N, {generator.z_dim}], got {list(z.shape)}")
    x = z[:, :, None, None]
    features = []
    for layer in generator.net:
        x = layer(x)
        if isinstance(layer, nn.ReLU | nn.Tanh):  # the end of a block
            features.append(x)
    return x, features


def _row_log_softmax(features: torch.Tensor) -> torch.Tensor:
    """Each sample's log-softmax over its cosine similarities to the others.  # [N, N-1]"""
    flat = F.normalize(features.float().flatten(1), dim=1)  # [N, D], unit length
    similarity = flat @ flat.T  # [N, N]
    n = len(flat)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=flat.device)
    return F.log_softmax(similarity[off_diagonal].view(n, n - 1), dim=1)


def cdc_loss(source: list[torch.Tensor], adapted: list[torch.Tensor]) -> torch.Tensor:
    """KL(source || adapted) of the per-sample similarity distributions, averaged over layers.

    source, adapted: the same layers' features for the same latents (`generator_features`);
    needs a batch of at least 3 samples (two "others" per row). Gradients flow into `adapted`
    only; `source` is treated as a constant.
    """
    if len(source) != len(adapted) or not source:
        raise ValueError(f"need the same non-empty layers, got {len(source)} and {len(adapted)}")
    if len(source[0]) < 3:
        raise ValueError(f"CDC needs a batch of at least 3 latents, got {len(source[0])}")
    losses = []
    for s, a in zip(source, adapted, strict=True):
        log_p = _row_log_softmax(s.detach())
        log_q = _row_log_softmax(a)
        # Sum over each row's distribution, mean over rows ("batchmean").
        losses.append(F.kl_div(log_q, log_p, reduction="batchmean", log_target=True))
    return torch.stack(losses).mean()
