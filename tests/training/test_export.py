"""ONNX export parity and publication."""

import numpy as np
import onnx
import pytest
import torch

from service.core.gan_session import GeneratorSession
from service.core.repository import ModelRepository
from training import export
from training.config import profile
from training.loop import build_networks, train


def test_export_parity_and_dynamic_batch(tmp_path):
    generator, _ = build_networks(profile("tiny"))
    path = tmp_path / "g.onnx"
    parity = export.export_onnx(generator, path)
    assert parity < 1e-5
    model = onnx.load(str(path))
    assert model.graph.input[0].name == "z"
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = GeneratorSession(path)
    for n in (1, 3, 70):
        assert session.sample(n, seed=1).shape == (n, 32, 32, 3)
    assert np.array_equal(session.sample(4, seed=7), session.sample(4, seed=7))
    assert not np.array_equal(session.sample(4, seed=7), session.sample(4, seed=8))


def test_export_rejected_above_parity_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "PARITY_LIMIT", -1.0)  # no difference can pass
    generator, _ = build_networks(profile("tiny"))
    path = tmp_path / "g.onnx"
    with pytest.raises(ValueError, match="parity"):
        export.export_onnx(generator, path)
    assert not path.exists()


def test_publish_generator_card(tmp_path):
    cfg = profile("tiny").replace(iterations=2)
    train(cfg, torch.rand(6, 3, 32, 32) * 2 - 1, tmp_path / "run", extra={"parent": "p"})
    version = export.publish_generator(tmp_path / "run", "sku-1", tmp_path / "models")
    card = version.card
    assert (card["name"], card["version"], card["iterations"], card["parent"]) == (
        "sku-1",
        1,
        2,
        "p",
    )
    assert card["onnx_parity_max_abs"] <= export.PARITY_LIMIT
    assert card["config"]["resolution"] == 32 and card["created_at"]
    again = export.publish_generator(tmp_path / "run", "sku-1", tmp_path / "models")
    assert again.version == 2
    assert ModelRepository(tmp_path / "models").resolve("sku-1").version == 2
    with pytest.raises(ValueError, match="not a valid SKU"):
        export.publish_generator(tmp_path / "run", "../evil", tmp_path / "models")
