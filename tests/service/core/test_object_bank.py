"""The object bank's files: what `save` writes, `load` reads back, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.object_bank import BANK_DIR, BANK_INDEX, BankObject, ObjectBank


def test_a_saved_bank_loads_back_identical(tmp_path):
    rng = np.random.default_rng(0)
    objects = [BankObject(i % 2, rng.integers(0, 256, (9 + i, 7, 3), np.uint8),
                          np.round(rng.random((9 + i, 7)) * 255).astype(np.float32) / 255,
                          f"photo{i}", 0.25 * i) for i in range(3)]
    bank = ObjectBank(objects, rng.integers(0, 256, (30, 40, 3), np.uint8), ["a", "b"], [1, 2],
                      (0.1, 0.2, 0.8, 0.9), 3.5, "upload", [[1.0, 0.9, 1.1], [1.2, 1.0, 1.0]])
    bank.save(tmp_path)
    loaded = ObjectBank.load(tmp_path)
    assert (loaded.empty == bank.empty).all() and loaded.names == ["a", "b"]
    assert loaded.counts == [1, 2] and loaded.floor == bank.floor and loaded.noise == 3.5
    assert loaded.gains == bank.gains and loaded.empty_source == "upload"
    for a, b in zip(bank.objects, loaded.objects, strict=True):
        assert a.cls == b.cls and a.source == b.source and a.occluded == b.occluded
        assert (a.pixels == b.pixels).all() and np.abs(a.alpha - b.alpha).max() < 1e-6
    assert loaded.statistics() == bank.statistics()
    assert bank.statistics()["per_class"] == {"a": 2, "b": 1}


def test_a_bank_without_objects_or_files_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no objects"):
        ObjectBank([], np.zeros((4, 4, 3), np.uint8), [], [])
    with pytest.raises(OSError):
        ObjectBank.load(tmp_path)
    (tmp_path / BANK_DIR).mkdir()
    (tmp_path / BANK_DIR / BANK_INDEX).write_text("{not json")
    with pytest.raises(ValueError):
        ObjectBank.load(tmp_path)
