"""SlicedSession: a batch run as slices side by side gives what the whole batch gives."""

from __future__ import annotations

import numpy as np

from service.core.onnx_session import SlicedSession
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
