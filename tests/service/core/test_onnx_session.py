"""SlicedSession: a batch run as slices side by side gives what the whole batch gives."""

from __future__ import annotations

import numpy as np

from service.core import onnx_session
from service.core.onnx_session import WIDE_BATCH, SlicedSession
from training import export
from training.config import profile
from training.loop import build_networks


def test_slices_side_by_side_match_the_whole_batch(tmp_path):
    generator, _ = build_networks(profile("tiny"))  # ConvTranspose stack, as in production
    path = tmp_path / "g.onnx"
    export.export_onnx(generator, path)
    z = np.random.default_rng(0).standard_normal((7, generator.z_dim), dtype=np.float32)
    one = SlicedSession(path, threads=1)
    assert not one.slicing
    expected = one.run(None, {"z": z})[0]
    sliced = SlicedSession(path, threads=3)
    assert sliced.slicing and sliced.get_inputs()[0].name == "z"
    assert sliced.run(None, {"z": z[:2]})[0].shape == (2, 3, 32, 32)
    assert sliced._sliced is None  # fewer images than threads: run whole
    got = sliced.run(None, {"z": z})[0]  # slices of 2, 2 and 3 images
    assert sliced._sliced is not None
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert sliced.run(None, {"z": z[:0]})[0].shape == (0, 3, 32, 32)


def test_small_batches_keep_to_the_workers_share_and_wide_ones_take_the_pool(tmp_path,
                                                                           monkeypatch):
    generator, _ = build_networks(profile("tiny"))
    path = tmp_path / "g.onnx"
    export.export_onnx(generator, path)
    z = np.random.default_rng(1).standard_normal((WIDE_BATCH, generator.z_dim), np.float32)
    expected = SlicedSession(path, threads=1).run(None, {"z": z})[0]
    # Two workers on two CPUs: each has one CPU as its share, and a pool of two threads.
    monkeypatch.setattr(onnx_session, "session_threads", lambda: 1)
    monkeypatch.setattr(onnx_session, "pool_threads", lambda: 2)
    session = SlicedSession(path)
    assert (session.share, session.wide) == (1, 2)
    small = session.run(None, {"z": z[:WIDE_BATCH - 1]})[0]
    assert session._sliced is None  # ran whole, on the worker's one CPU
    np.testing.assert_allclose(small, expected[:WIDE_BATCH - 1], atol=1e-5)
    wide = session.run(None, {"z": z})[0]
    assert session._sliced is not None  # two slices, side by side
    np.testing.assert_allclose(wide, expected, atol=1e-5)
