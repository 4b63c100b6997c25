"""bentofile.yaml: `bentoml build` works offline, with the packages pyproject.toml declares.

The build runs in a network namespace of its own where the machine allows one (root can
`unshare --net`), so "offline" is enforced rather than assumed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BENTOFILE = ROOT / "bentofile.yaml"


@pytest.fixture(scope="module")
def bentofile() -> dict:
    return yaml.safe_load(BENTOFILE.read_text())


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_bento_packages_are_pyprojects_with_the_gpu_runtime(bentofile):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        requirement_name(r): r.split(";")[0].strip()
        for r in project["dependencies"] + project["optional-dependencies"]["gpu"]
    }
    del wanted["onnxruntime"]  # the CPU build would overwrite onnxruntime-gpu's files
    packages = {requirement_name(p): p for p in bentofile["python"]["packages"]}
    assert packages.keys() == wanted.keys()
    for name, requirement in wanted.items():
        if name != "onnxruntime-gpu":  # pinned exactly in the bento, ranged in pyproject
            assert packages[name] == requirement, name
    assert bentofile["python"]["lock_packages"] is False


def test_bento_and_dockerfile_pin_the_same_onnxruntime_gpu(bentofile):
    dockerfile_pin = re.search(r"ORT_GPU_VERSION=(\S+)", (ROOT / "Dockerfile").read_text())
    assert dockerfile_pin
    assert f"onnxruntime-gpu=={dockerfile_pin.group(1)}" in bentofile["python"]["packages"]


def offline_prefix() -> list[str]:
    """`unshare --net` when this user may make a network namespace, else nothing."""
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    return ["unshare", "--net"] if probe.returncode == 0 else []


@pytest.mark.timeout(120)
def test_bentoml_build_offline(tmp_path, bentofile):
    if not (ROOT / "service" / "service.py").exists():
        pytest.skip("service/service.py does not exist yet")
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PIP_NO_INDEX": "1",
    }
    bentoml = [sys.executable, "-m", "bentoml"]
    result = subprocess.run(
        [*offline_prefix(), *bentoml, "build", "--output", "tag", str(ROOT)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=110,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    tag = re.search(r"__tag__:(\S+)", result.stdout)
    assert tag and tag.group(1).startswith("boxgen:")
    bento = next((tmp_path / "bentoml" / "bentos" / "boxgen").glob("*/bento.yaml")).parent

    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "service.service:Boxgen"
    for source in ("service/service.py", "service/jobs.py", "training/cli.py", "pyproject.toml"):
        assert (bento / "src" / source).is_file(), source
    assert not list((bento / "src").glob("tests")), "tests are not shipped"
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().split()
    assert "onnxruntime-gpu==1.31.1" in requirements
    assert not [r for r in requirements if requirement_name(r) == "onnxruntime"]
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert f"FROM {bentofile['docker']['base_image']}" in dockerfile
    assert "ENV LD_LIBRARY_PATH=" in dockerfile and "ENV BENTOML_DO_NOT_TRACK=" in dockerfile
    assert "libgl1" in dockerfile
