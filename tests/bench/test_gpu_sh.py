"""bench/gpu.sh --dry-run: the GPU script starts, runs every step on the CPU at tiny sizes and
writes its outputs under $OUT, so a GPU session is not the first to find it broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.server import tiny_repository

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dry_run_writes_every_output_and_exits_0(tmp_path):
    out = tmp_path / "gpu-results"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable,
           "MODELS": str(tiny_repository(tmp_path / "models"))}  # its labeller: no training
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for name in ("env.txt", "model_throughput.md", "model_throughput.json", "throughput.md",
                 "throughput.json", "throughput.png", "train_speed.txt", "pytest.txt",
                 "summary.txt"):
        assert (out / name).stat().st_size > 0, name
    assert "CUDAExecutionProvider" in (out / "env.txt").read_text()  # says if it is installed
    rows = json.loads((out / "model_throughput.json").read_text())["rows"]
    assert {r["model"].split()[0] for r in rows} == {"gan", "compose", "labeller"}
    assert {"torch-fp32", "torch-bf16"} <= {r["backend"] for r in rows}
    assert all(r.get("img_s", 0) > 0 for r in rows), [r for r in rows if "img_s" not in r]
    fp16 = [r["parity_vs_fp32"] for r in rows if "parity_vs_fp32" in r]
    assert len(fp16) == 3 and all(0 <= d < 0.5 for d in fp16), fp16  # one per network
    recipes = json.loads((out / "throughput.json").read_text())["recipes"]
    assert all(recipes[r]["direct"]["img_s"] > 0 for r in ("compose", "gan"))
    assert all("exit 0" in line for line in (out / "summary.txt").read_text().splitlines())
