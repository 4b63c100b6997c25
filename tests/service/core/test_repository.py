"""The model repository: atomic, immutable publication and safe names."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from service.core.cards import GeneratorCard, LabellerCard
from service.core.repository import (
    STALE_STAGING_SECONDS,
    ModelNotFound,
    ModelRepository,
    RepositoryFull,
    staging_folder,
    validate_sku,
)


def make_file(path, size=10):
    path.write_bytes(os.urandom(size))
    return path


def test_publish_and_resolve(tmp_path):
    repo = ModelRepository(tmp_path / "models")
    assert repo.skus() == [] and repo.versions("a") == []
    src = make_file(tmp_path / "g.onnx")
    v1 = repo.publish("a", {"generator.onnx": src}, GeneratorCard(iterations=3))
    v2 = repo.publish("a", {"generator.onnx": src}, GeneratorCard(iterations=4))
    assert (v1.version, v2.version) == (1, 2)
    assert repo.resolve("a").version == 2 and repo.resolve("a", 1).card["iterations"] == 3
    assert repo.resolve("a").file("generator.onnx").read_bytes() == src.read_bytes()
    assert repo.skus() == ["a"]
    repo.publish("_labeller", {"labeller.onnx": src}, LabellerCard(classes=["a"], imgsz=64))
    assert repo.skus() == ["a"] and repo.names() == ["_labeller", "a"]
    with pytest.raises(ModelNotFound, match="no version 9"):
        repo.resolve("a", 9)
    with pytest.raises(ModelNotFound, match="no model 'b'"):
        repo.resolve("b")


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "_base", ".hidden", "a" * 65, "a b", "x..y"])
def test_bad_sku_names(bad):
    with pytest.raises(ValueError, match="not a valid SKU"):
        validate_sku(bad)


def test_failed_copy_leaves_nothing(tmp_path):
    repo = ModelRepository(tmp_path)
    with pytest.raises(FileNotFoundError):
        repo.publish("a", {"generator.onnx": tmp_path / "missing.onnx"}, GeneratorCard())
    assert repo.versions("a") == [] and os.listdir(tmp_path / "a") == []


def test_killed_publish_leaves_no_visible_version(tmp_path):
    """SIGKILL a publisher just before its rename: no version appears, the next one is 1."""
    src = make_file(tmp_path / "g.onnx", 1 << 20)
    child = textwrap.dedent(f"""
        import os, time
        from service.core.cards import GeneratorCard
        from service.core.repository import ModelRepository
        os.rename = lambda *a: (print("staged", flush=True), time.sleep(60))
        ModelRepository({str(tmp_path / "models")!r}).publish(
            "a", {{"generator.onnx": {str(src)!r}}}, GeneratorCard())
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "staged"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    repo = ModelRepository(tmp_path / "models")
    staged = [p.name for p in (tmp_path / "models" / "a").iterdir()]
    assert len(staged) == 1 and staged[0].startswith(".")  # the orphan is hidden
    assert repo.versions("a") == [] and repo.skus() == []
    with pytest.raises(ModelNotFound):
        repo.resolve("a")
    assert repo.remove_abandoned_staging() == [tmp_path / "models" / "a" / staged[0]]
    assert os.listdir(tmp_path / "models" / "a") == []
    assert repo.publish("a", {"generator.onnx": src}, GeneratorCard()).version == 1


def test_cleanup_keeps_live_writers_staging_and_removes_stale(tmp_path):
    """A running writer's staging folder stays; any left untouched past the limit goes."""
    repo = ModelRepository(tmp_path)
    (tmp_path / "a").mkdir()
    live = staging_folder(tmp_path / "a")  # ours: this process runs
    stale = tmp_path / "a" / ".staging-elsewhere-1-abcdefgh"  # another host's, long abandoned
    stale.mkdir()
    os.utime(stale, (0, 0))
    assert repo.remove_abandoned_staging() == [stale]
    assert live.is_dir() and not stale.exists()
    recent = tmp_path / "a" / ".staging-elsewhere-1-ijklmnop"  # another host's, maybe running
    recent.mkdir()
    assert repo.remove_abandoned_staging() == [] and STALE_STAGING_SECONDS > 60


def test_full_disk_publishes_nothing_and_says_so(tmp_path, monkeypatch):
    repo = ModelRepository(tmp_path)
    src = make_file(tmp_path / "g.onnx")
    repo.publish("a", {"generator.onnx": src}, GeneratorCard())

    def full(src, dst, *args, **kwargs):
        with open(dst, "wb") as f:  # part of the file got there
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(RepositoryFull, match="disk full.*nothing was published"):
        repo.publish("a", {"generator.onnx": src}, GeneratorCard())
    assert repo.versions("a") == [1] and os.listdir(tmp_path / "a") == ["1"]


def test_a_number_folder_without_card_is_skipped_not_looped_on(tmp_path):
    """An incomplete `3/` (no card) is invisible, and publication takes the number after it."""
    repo = ModelRepository(tmp_path)
    src = make_file(tmp_path / "g.onnx")
    (tmp_path / "a" / "3").mkdir(parents=True)
    (tmp_path / "a" / "3" / "generator.onnx").write_bytes(b"partial")
    assert repo.versions("a") == []
    assert repo.publish("a", {"generator.onnx": src}, GeneratorCard()).version == 4
