"""The per-worker model cache: real tiny ONNX generators and selection data, bounded memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.core.pipeline import ModelCache
from service.core.repository import ModelRepository
from service.core.selector import Selector
from tests.service.server import publish_tiny_generator
from training.render import make_group, render_image


def publish_with_selection(models: Path, tmp: Path, seed: int) -> int:
    """A tiny generator version whose card carries real selection data (novelty only)."""
    photos = np.stack([np.asarray(render_image(make_group(0, 1), (64, 64),
                                               np.random.default_rng([seed, i]))[0])
                       for i in range(4)])
    folder = tmp / f"selection-{seed}"
    section = Selector.fit(photos, None).save(folder)
    return publish_tiny_generator(models, "sku", seed=seed, card={"selection": section},
                                  files={"selection.npz": folder / "selection.npz"})


def test_cache_keeps_at_most_max_generators_of_each_kind(tmp_path):
    models = tmp_path / "models"
    versions = [publish_with_selection(models, tmp_path, seed) for seed in range(3)]
    repo = ModelRepository(models)
    cache = ModelCache(repo, max_generators=2)
    entries = [repo.resolve("sku", v) for v in versions]
    for entry in entries:
        assert cache.selector(entry).copy_threshold > 0
        cache.generator(entry)
    keys = [("sku", e.version, e.stamp) for e in entries]  # the stamp: which copy of it
    assert list(cache.selectors) == list(cache.generators) == keys[1:]
    cache.selector(entries[1])  # used again: the newest, so version 3 goes first
    cache.selector(entries[0])
    assert list(cache.selectors) == [keys[1], keys[0]]
