"""Where models run: CUDA when present, unless `BOXGEN_DEVICE=cpu` asks for the CPU; and on
how many CPU threads.

One switch for both runtimes: onnxruntime's providers (`onnx_session`) and torch's device
(`training.devices`) read it here.

onnxruntime sizes its thread pool to the host's physical cores. In a container with a CPU
limit (a Kubernetes pod's `limits.cpu`) that is the node's count, not the pod's: a 4-CPU pod
on a 64-core node would run 64 threads per session, throttled by the quota. And each of a
server's workers has its own sessions. So a worker's sessions get the CPUs the process may use
(its affinity mask, capped by the cgroup quota) divided among the server's workers, or
`BOXGEN_ORT_THREADS`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

DEVICE_ENV = "BOXGEN_DEVICE"
THREADS_ENV = "BOXGEN_ORT_THREADS"  # intra-op threads per session, overriding the budget
WORKERS_ENV = "BOXGEN_WORKERS"  # worker processes of this server (`boxgen serve` sets it)
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")


def cpu_forced() -> bool:
    """Whether `BOXGEN_DEVICE=cpu` keeps everything on the CPU."""
    return os.environ.get(DEVICE_ENV, "").lower() == "cpu"


def cgroup_cpus(v2: Path = CGROUP_V2, v1: Path = CGROUP_V1) -> float | None:
    """The cgroup's CPU quota in CPUs (`limits.cpu`), or None when there is none."""
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def cpu_budget() -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_cpus()
    return max(1, min(cpus or 1, math.ceil(quota) if quota else cpus or 1))


def _positive_env(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return int(raw)


def session_threads() -> int:
    """Intra-op threads for each session of this worker: `BOXGEN_ORT_THREADS`, else the CPU
    budget shared among the server's workers (`BOXGEN_WORKERS`, default 1)."""
    threads = _positive_env(THREADS_ENV)
    if threads is not None:
        return threads
    return max(1, cpu_budget() // (_positive_env(WORKERS_ENV) or 1))
