"""bench/model_throughput.py's dry run with rounds: every backend timed once a round, and
onnxruntime's speed-up over torch fp32 paired round by round in the table."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_rounds_pair_each_onnxruntime_timing_with_torchs_of_the_same_round(tmp_path):
    out = tmp_path / "model_throughput.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "model_throughput.py"), "--dry-run", "--batches",
         "2", "--rounds", "3", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert {r["model"].split()[0] for r in rows} == {"gan", "compose", "labeller"}
    assert all(len(r["rounds_img_s"]) == 3 for r in rows), rows
    assert all(r["img_s"] == statistics.median(r["rounds_img_s"]) for r in rows)
    table = out.read_text()
    assert "least-most of 3 rounds" in table
    for model in {r["model"] for r in rows}:
        torch_ = next(r for r in rows if r["model"] == model and r["backend"] == "torch-fp32")
        ort_ = next(r for r in rows if r["model"] == model and r["backend"] == "ort-CPU")
        ratios = [o / t for o, t in zip(ort_["rounds_img_s"], torch_["rounds_img_s"],
                                        strict=True)]
        cell = (f"| {model} | ort-CPU | 2 | {statistics.median(ratios):.2f}× "
                f"({min(ratios):.2f}-{max(ratios):.2f}) |")
        assert cell in table, (cell, table)


def test_rounds_below_one_are_refused_naming_the_flag():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "model_throughput.py"), "--dry-run", "--rounds",
         "0"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "argument --rounds: must be at least 1, got 0" in result.stderr
