"""The `boxgen` CLI end to end on the tiny profile, and its one-line errors."""

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from service.repository import ModelRepository
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
           "--iterations", 3, "--models", root / "models")
    return root


def test_pretrain_publishes_base(pipeline):
    base = ModelRepository(pipeline / "models").resolve("_base")
    assert base.card["iterations"] == 3 and base.file("base.pt").is_file()
    assert (pipeline / "base" / "samples").is_dir() and (pipeline / "base" / "tb").is_dir()


def test_finetune_export_generate(pipeline):
    models = pipeline / "models"
    out = invoke("finetune", "--images", pipeline / "sku" / "images", "--sku", "sku-a",
                 "--models", models, "--iterations", 2, "--out", pipeline / "ft",
                 "--freeze-critic-blocks", 1)
    assert "published sku-a version 1" in out
    card = ModelRepository(models).resolve("sku-a").card
    assert card["parent"] == "_base/1" and card["images"] == 5 and card["iterations"] == 2
    assert card["config"]["freeze_critic_blocks"] == 1 and card["data_fingerprint"]

    assert "version 2" in invoke("export", "--run", pipeline / "ft", "--sku", "sku-a",
                                 "--models", models)
    invoke("generate", "--sku", "sku-a", "-n", 3, "--out", pipeline / "gen", "--models", models,
           "--seed", 4, "--version", 1)
    invoke("generate", "--sku", "sku-a", "-n", 3, "--out", pipeline / "gen2", "--models", models,
           "--seed", 4, "--version", 1)
    first = sorted((pipeline / "gen" / "images").glob("*.png"))
    second = sorted((pipeline / "gen2" / "images").glob("*.png"))
    assert len(first) == 3
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert Image.open(first[0]).size == (32, 32)


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
