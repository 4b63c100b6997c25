"""service/core/yolo.py: label rows and data.yaml names round-trip and bad files are named."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from service.core.yolo import format_rows, read_names, read_rows, write_data_yaml, xyxy


def test_rows_round_trip_and_segments_become_boxes(tmp_path):
    rows = np.array([[0, 0.5, 0.5, 0.2, 0.4], [3, 0.25, 0.75, 0.1, 0.1]])
    (tmp_path / "a.txt").write_text(format_rows(rows))
    assert np.allclose(read_rows(tmp_path / "a.txt"), rows)
    (tmp_path / "seg.txt").write_text("2 0.1 0.2 0.5 0.2 0.5 0.6\n")
    assert np.allclose(read_rows(tmp_path / "seg.txt"), [[2, 0.3, 0.4, 0.4, 0.4]])
    assert format_rows(np.zeros((0, 5))) == ""
    assert read_rows(tmp_path / "missing.txt", missing_ok=True).shape == (0, 5)
    with pytest.raises(FileNotFoundError):
        read_rows(tmp_path / "missing.txt")
    assert np.allclose(xyxy(rows[:1], (100, 200)), [[80, 30, 120, 70]])


@pytest.mark.parametrize("line, problem", [("0 0.5 0.5 0.2", "expected"),
                                           ("a b c d e", "not numbers"),
                                           ("-1 0.5 0.5 0.1 0.1", "integer"),
                                           ("0 0.5 0.5 1.5 0.1", r"\[0, 1\]")])
def test_bad_rows_name_the_file_and_line(tmp_path, line, problem):
    (tmp_path / "bad.txt").write_text(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(ValueError, match=f"bad.txt:2: .*{problem}"):
        read_rows(tmp_path / "bad.txt")


def test_names_as_list_or_mapping_and_written_for_ultralytics(tmp_path):
    write_data_yaml(tmp_path, ["tube", "can"], comment="hello")
    text = (tmp_path / "data.yaml").read_text()
    assert text.startswith("# hello\n") and "path" not in yaml.safe_load(text)
    assert read_names(tmp_path) == ["tube", "can"]
    (tmp_path / "data.yaml").write_text("names: [a, b]\n")
    assert read_names(tmp_path) == ["a", "b"]
    (tmp_path / "data.yaml").write_text("names: {0: a, 2: b}\n")
    with pytest.raises(ValueError, match="numbered"):
        read_names(tmp_path)
    (tmp_path / "data.yaml").write_text("train: images\n")
    with pytest.raises(ValueError, match="no class names"):
        read_names(tmp_path)
    assert read_names(tmp_path / "nowhere", required=False) is None
    with pytest.raises(FileNotFoundError, match="data.yaml"):
        read_names(tmp_path / "nowhere")
