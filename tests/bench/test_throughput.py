"""bench/throughput.py's quick mode end to end: real models, a real server, every mode and
recipe in the table, the JSON and the chart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.service.server import tiny_repository

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_run_reports_every_mode_and_recipe(tmp_path):
    models = tiny_repository(tmp_path / "models")  # its labeller; the bench builds the rest
    out = tmp_path / "throughput.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--models",
         str(models), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert sorted(record["recipes"]) == ["compose", "gan"]
    for recipe, figures in record["recipes"].items():
        for mode in ("direct", "direct_ref", "http1", "http16", "direct_ref_after"):
            assert figures[mode]["img_s"] > 0, (recipe, mode)
        for mode in ("http1", "http16"):
            assert 0 < figures[mode]["p50_s"] <= figures[mode]["p99_s"], (recipe, mode)
        shares = figures["direct"]["stage_share"]
        assert sum(shares.values()) == pytest.approx(1.0)
        assert shares["label"] > 0 and shares["encode"] > 0
        assert shares["compose" if recipe == "compose" else "generate"] > 0
        assert figures["peak_rss_mb"] > 0
        assert figures["http16"]["client_cpu_ms_per_request"] > 0
    table = out.read_text()
    assert "| compose (green) |" in table and "| gan (none) |" in table
    assert "ms of CPU a request" in table and "before / after the server" in table
    assert "p50 / p99" in table and "peak RSS" in table and "served / tried" in table
    with Image.open(out.with_suffix(".png")) as chart:
        assert chart.size[0] > 300
