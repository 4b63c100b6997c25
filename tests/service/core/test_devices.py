"""CPU threads per session: the container's CPU limit and the server's workers, not the host."""

from __future__ import annotations

import pytest

from service.core import devices
from service.core.onnx_session import open_session
from tests.service.server import publish_tiny_generator


def test_cgroup_quota_is_read_from_v2_then_v1(tmp_path):
    v2, v1 = tmp_path / "cpu.max", tmp_path / "v1"
    assert devices.cgroup_cpus(v2, v1) is None  # neither there: no quota
    v2.write_text("max 100000\n")
    assert devices.cgroup_cpus(v2, v1) is None
    v2.write_text("150000 100000\n")  # limits.cpu: 1500m
    assert devices.cgroup_cpus(v2, v1) == 1.5
    v2.unlink()
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert devices.cgroup_cpus(v2, v1) == 4
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert devices.cgroup_cpus(v2, v1) is None


def test_threads_follow_the_quota_the_workers_and_the_override(monkeypatch):
    monkeypatch.delenv(devices.THREADS_ENV, raising=False)
    monkeypatch.delenv(devices.WORKERS_ENV, raising=False)
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda _: set(range(64)))
    monkeypatch.setattr(devices, "cgroup_cpus", lambda: 3.5)  # a 3500m pod on a 64-core node
    assert devices.cpu_budget() == 4 and devices.session_threads() == 4
    monkeypatch.setenv(devices.WORKERS_ENV, "2")
    assert devices.session_threads() == 2
    monkeypatch.setattr(devices, "cgroup_cpus", lambda: None)
    assert devices.session_threads() == 32
    monkeypatch.setenv(devices.THREADS_ENV, "3")
    assert devices.session_threads() == 3
    monkeypatch.setenv(devices.THREADS_ENV, "many")
    with pytest.raises(ValueError, match="BOXGEN_ORT_THREADS must be a positive integer"):
        devices.session_threads()


def test_sessions_open_with_the_worker_share(tmp_path, monkeypatch):
    models = tmp_path / "models"
    publish_tiny_generator(models, "sku")
    monkeypatch.setenv(devices.THREADS_ENV, "1")
    onnx = next(models.rglob("generator.onnx"))
    assert open_session(onnx).get_session_options().intra_op_num_threads == 1
    assert open_session(onnx, threads=2).get_session_options().intra_op_num_threads == 2
