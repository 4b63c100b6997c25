"""service/core/atomic.py: whole files or none, also when the writer dies mid-write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.core.atomic import read_json, write_json_atomic


def test_write_json_atomic_replaces_whole_file(tmp_path: Path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # not JSON: fails before anything is replaced
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_read_json_of_a_missing_or_broken_file_is_empty(tmp_path: Path):
    assert read_json(tmp_path / "missing.json") == {}
    (tmp_path / "broken.json").write_text('{"a": ')
    assert read_json(tmp_path / "broken.json") == {}
