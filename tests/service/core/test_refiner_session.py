"""The refiner ONNX file run by onnxruntime matches torch, in batches, for any N and size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.core.refiner_session import RefinerSession
from training.refiner import Refiner, export_refiner, refiner_from_state, refiner_profile


@pytest.fixture(scope="module")
def trained_state() -> dict:
    """A refiner whose correction is not zero (an identity would hide a wrong layout)."""
    cfg = refiner_profile("tiny")
    torch.manual_seed(0)
    refiner = Refiner(cfg.channels, cfg.blocks)
    with torch.no_grad():
        for p in refiner.tail.parameters():
            p.normal_(0, 0.05)
    return {"config": cfg.to_dict(), "refiner": refiner.state_dict()}


@pytest.fixture(scope="module")
def session(trained_state, tmp_path_factory) -> RefinerSession:
    path = tmp_path_factory.mktemp("refiner") / "refiner.onnx"
    export_refiner(trained_state, path)
    return RefinerSession(path, batch_size=4)


def torch_refine(state: dict, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    composite = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        out = refiner_from_state(state)(composite, torch.from_numpy(masks)[:, None])
    return np.clip((out.numpy() + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def test_matches_torch_in_batches_larger_than_batch_size(session, trained_state):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 37, 53, 3), dtype=np.uint8)  # 10 = 4 + 4 + 2
    masks = (rng.uniform(size=(10, 37, 53)) > 0.5).astype(np.float32)
    got = session.refine(images, masks)
    assert got.shape == images.shape and got.dtype == np.uint8
    expected = torch_refine(trained_state, images, masks)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert np.abs(got.astype(int) - images.astype(int)).max() > 1  # it did refine something
    # Batching must not change results: image 9 alone equals image 9 in a batch.
    assert np.array_equal(session.refine(images[9:], masks[9:]), got[9:])


def test_empty_batch_and_bad_shapes(session):
    out = session.refine(np.zeros((0, 24, 30, 3), np.uint8), np.zeros((0, 24, 30), np.float32))
    assert out.shape == (0, 24, 30, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="masks"):
        session.refine(np.zeros((2, 24, 30, 3), np.uint8), np.zeros((2, 24, 31), np.float32))


def test_large_images_run_in_smaller_batches(session, monkeypatch):
    from service.core import refiner_session

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    masks = np.ones((5, 40, 40), np.float32)
    whole = session.refine(images, masks)
    calls = []
    run = session.session.run
    monkeypatch.setattr(session.session, "run", lambda *a: calls.append(a[1]) or run(*a),
                        raising=False)
    monkeypatch.setattr(refiner_session, "BATCH_PIXELS", 2 * 40 * 40)  # two images a run
    assert np.array_equal(session.refine(images, masks), whole)
    assert [len(c["composite"]) for c in calls] == [2, 2, 1]
