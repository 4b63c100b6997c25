"""The `boxgen` CLI end to end on the tiny profile, and its one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from service.core.repository import ModelRepository
from training.cli import cli


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    invoke("demo-data", root / "corpus", "--groups", 2, "--per-group", 6, "--size", "32x32")
    invoke("demo-data", root / "sku", "--groups", 1, "--per-group", 5, "--size", "48x40",
           "--first-group", 5)
    invoke("pretrain", "--data", root / "corpus", "--out", root / "base", "--profile", "tiny",
           "--iterations", 3, "--models", root / "models", "--refiner-steps", 2)
    invoke("train-labeller", "--data", root / "corpus", "--model", "yolov5n.yaml", "--epochs", 1,
           "--imgsz", 32, "--batch", 4, "--models", root / "models")
    out = invoke("finetune", "--images", root / "sku" / "images", "--sku", "sku-a",
                 "--models", root / "models", "--iterations", 2, "--out", root / "ft",
                 "--freeze-critic-blocks", 1, "--recipe", "gan")
    assert "published sku-a version 1" in out
    return root


def test_pretrain_publishes_base(pipeline):
    base = ModelRepository(pipeline / "models").resolve("_base")
    assert base.card["iterations"] == 3 and base.file("base.pt").is_file()
    assert base.file("refiner.pt").is_file() and base.card["refiner"]["steps"] == 2
    assert (pipeline / "base" / "samples").is_dir() and (pipeline / "base" / "tb").is_dir()


def test_finetune_export_generate(pipeline):
    """Fine-tune (in the fixture), export the run again, generate by seed."""
    models = pipeline / "models"
    card = ModelRepository(models).resolve("sku-a", 1).card
    assert card["parent"] == "_base/1" and card["images"] == 5 and card["iterations"] == 2
    assert card["config"]["freeze_critic_blocks"] == 1 and card["data_fingerprint"]
    assert card["selection"]["novelty"]["copy_threshold"] > 0
    assert set(card["evaluation"]["categories"]) == {"green", "yellow", "white", "red"}
    assert [s["step"] for s in card["snapshots"]] == [2]

    assert "version 2" in invoke("export", "--run", pipeline / "ft", "--sku", "sku-a",
                                 "--models", models)
    gen = [pipeline / "gen", pipeline / "gen2"]
    for out in gen:
        invoke("generate", "--sku", "sku-a", "-n", 3, "--out", out, "--models", models,
               "--seed", 4, "--version", 1, "--select", "none")
    first, second = (sorted((out / "images").glob("*.png")) for out in gen)
    assert len(first) == 3 and Image.open(first[0]).size == (32, 32)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    for out in gen:
        assert {p.name for p in out.iterdir()} >= {"images", "labels", "annotations.json",
                                                   "data.yaml", "generation.json"}
    assert len(list((gen[0] / "labels").glob("*.txt"))) == 3


def test_compose_finetune_and_generate_at_a_size(pipeline):
    """A YOLO folder's labels and names carry through; the base's refiner is the start."""
    models = pipeline / "models"
    invoke("finetune", "--images", pipeline / "sku", "--sku", "sku-c", "--models", models,
           "--iterations", 2, "--out", pipeline / "ft-c", "--refine")
    card = ModelRepository(models).resolve("sku-c").card
    assert card["recipe"] == "compose" and card["refiner"]["parent"] == "_base/1"
    invoke("generate", "--sku", "sku-c", "-n", 2, "--out", pipeline / "gen-c", "--models",
           models, "--size", 120, "--select", "none", "--seed", 0)
    images = sorted((pipeline / "gen-c" / "images").glob("*.png"))
    assert [Image.open(p).size for p in images] == [(120, 100)] * 2  # the photos' 48x40
    result = CliRunner().invoke(cli, ["generate", "--sku", "sku-a", "--out",
                                      str(pipeline / "x"), "--models", str(models), "--size",
                                      "64", "--version", "1"])
    assert result.exit_code == 1 and "size 64" in result.output and "gan" in result.output
    result = CliRunner().invoke(cli, ["generate", "--sku", "sku-c", "--out",
                                      str(pipeline / "x"), "--models", str(models),
                                      "--distractor", "sku-a", "--select", "none"])
    assert result.exit_code == 1 and "sku-a is a gan model" in result.output


def test_generate_selects_label_and_evaluate(pipeline):
    models = pipeline / "models"
    out = invoke("generate", "--sku", "sku-a", "-n", 2, "--out", pipeline / "green",
                 "--models", models, "--seed", 1, "--version", 1)  # 2 is a plain export
    assert "passed select=green" in out
    summary = json.loads((pipeline / "green" / "generation.json").read_text())
    assert all(image["category"] == "green" for image in summary["images"])

    invoke("label", "--images", pipeline / "sku" / "images", "--out", pipeline / "labelled",
           "--models", models)
    assert len(list((pipeline / "labelled" / "labels").glob("*.txt"))) == 5

    out = invoke("evaluate", "--images", pipeline / "sku" / "images", "--train",
                 pipeline / "sku" / "images", "--models", models, "--out", pipeline / "report")
    report = json.loads((pipeline / "report" / "report.json").read_text())
    assert report["categories"]["red"] == 1.0  # the training images themselves are copies
    assert (pipeline / "report" / "report.html").is_file()


def test_every_command_has_help():
    for command in cli.commands:
        assert "Usage:" in invoke(command, "--help")


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["missing-folder", "not-images", "empty", "profile", "sku"])
def test_bad_input_is_one_line(case, pipeline, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    (junk / "broken.png").write_bytes(b"not a png")
    empty = tmp_path / "empty"
    empty.mkdir()
    args, expected = {
        "missing-folder": (("pretrain", "--data", tmp_path / "nope", "--out", tmp_path / "r"),
                           "does not exist"),
        "not-images": (("pretrain", "--data", junk, "--out", tmp_path / "r", "--profile", "tiny"),
                       "broken.png"),
        "empty": (("finetune", "--images", empty, "--sku", "x", "--models", pipeline / "models"),
                  "no images"),
        "profile": (("pretrain", "--data", pipeline / "corpus", "--out", tmp_path / "r",
                     "--profile", "huge"), "unknown profile 'huge'"),
        "sku": (("generate", "--sku", "nope", "--out", tmp_path / "g", "--models",
                 pipeline / "models"), "no model 'nope'"),
    }[case]
    result = run_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert expected in lines[-1], result.stderr
    assert len([line for line in lines if line.startswith("Error")]) == 1
