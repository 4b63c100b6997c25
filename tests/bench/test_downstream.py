"""bench/downstream.py's quick mode end to end: real renders, real tiny fine-tunes of every
recipe (compose, compose without refiner, gan), real Ultralytics trainings and pycocotools
measurements, the table, chart and reuse."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.service.server import tiny_repository

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "downstream.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_quick_table_has_every_row_a_chart_and_reuses_finished_runs(tmp_path):
    models = tiny_repository(tmp_path / "models")
    out = tmp_path / "results" / "quick.md"
    args = ("--quick", "--models", str(models), "--work", str(tmp_path / "work"),
            "--out", str(out))
    first = bench(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    table = out.read_text()
    for row in ("(a) 10 real", "(b) 10 real + 20 compose", "(b) 10 real + 20 compose-raw",
                "(b) 10 real + 20 gan", "(c) 10 real + 20 copy-paste", "(d) 20 real (ceiling)",
                "(e) 20 gan alone", "(e) 20 compose alone"):
        assert row in table, row
    record = json.loads(out.with_suffix(".json").read_text())
    room = record["summary"]["room"]
    assert ("does not discriminate" in table) == (room < 0.05)
    runs = record["runs"]["g30"]
    rows = ["real", "+compose", "+compose-raw", "+gan", "+copy-paste", "ceiling",
            "compose-only", "compose-raw-only", "gan-only"]
    assert sorted(runs) == sorted(rows)
    assert all(0 <= r["mAP50_95"] <= r["mAP50"] <= 1 for rs in runs.values() for r in rs)
    assert [r["distinct"] for r in runs["+copy-paste"]] == [30]
    with Image.open(out.with_suffix(".png")) as chart:
        assert chart.size[0] > 300
    assert first.stdout.count("runs left") == len(rows)
    again = bench(*args)  # every run is finished: nothing trains again, same table
    assert again.returncode == 0, again.stderr[-3000:]
    assert "runs left" not in again.stdout
    assert json.loads(out.with_suffix(".json").read_text())["runs"] == record["runs"]


def test_generator_rows_without_models_name_what_is_missing(tmp_path):
    result = bench("--quick", "--rows", "real", "+gan", "--work", str(tmp_path))
    assert result.returncode != 0 and "make demo" in result.stderr


def test_own_data_needs_all_three_folders(tmp_path):
    result = bench("--photos", str(tmp_path), "--work", str(tmp_path))
    assert result.returncode != 0 and "--more-real" in result.stderr


@pytest.mark.slow
def test_own_yolo_folders_make_the_same_table(tmp_path):
    from training.render import write_corpus

    corpus = write_corpus(tmp_path / "corpus", 1, 32, (64, 64), seed=0, first_group=3)
    images = sorted((corpus / "images").iterdir())
    folders = {}
    for name, part in (("photos", images[:10]), ("more", images[10:20]), ("test", images[20:])):
        folders[name] = tmp_path / name
        for sub in ("images", "labels"):
            (folders[name] / sub).mkdir(parents=True)
        for image in part:
            shutil.copy(image, folders[name] / "images")
            shutil.copy(corpus / "labels" / f"{image.stem}.txt", folders[name] / "labels")
        shutil.copy(corpus / "data.yaml", folders[name])
    out = tmp_path / "own.md"
    result = bench("--quick", "--rows", "real", "ceiling", "--photos", str(folders["photos"]),
                   "--more-real", str(folders["more"]), "--test", str(folders["test"]),
                   "--work", str(tmp_path / "work"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    assert "Your data" in table and "(d) 20 real (ceiling)" in table
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]["photos"]
    assert runs["real"][0]["distinct"] == 10 and runs["ceiling"][0]["distinct"] == 20
