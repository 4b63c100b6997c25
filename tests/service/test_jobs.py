"""The job store and runner without a server: records, cancel, recovery after a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.core.cards import DEFAULT_REFINE
from service.jobs import (
    MAX_ATTEMPTS,
    JobNotFound,
    JobRunner,
    JobStore,
    finetune_command,
)
from service.security import UploadedFile


def upload(tmp_path: Path, count: int = 5, labels: int = 0):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    images, label_files = [], []
    for i in range(count):
        (src / f"p{i}.png").write_bytes(b"png")
        images.append(UploadedFile(src / f"p{i}.png", f"p{i}.png"))
    for i in range(labels):
        (src / f"p{i}.txt").write_text("0 0.5 0.5 0.1 0.1\n")
        label_files.append(UploadedFile(src / f"p{i}.txt", f"p{i}.txt"))
    return images, label_files


def test_create_stores_uploads_and_a_queued_record(tmp_path: Path):
    store = JobStore(tmp_path / "models")
    images, labels = upload(tmp_path, 5, 2)
    job = store.create("sku-a", images, labels, iterations=7)
    folder = tmp_path / "models" / "_jobs" / job.id
    assert sorted(p.name for p in (folder / "images").iterdir()) == [f"p{i}.png" for i in range(5)]
    assert sorted(p.name for p in (folder / "labels").iterdir()) == ["p0.txt", "p1.txt"]
    record = json.loads((folder / "job.json").read_text())
    assert record["state"] == "queued" and record["iterations"] == 7 and record["labels"] == 2
    assert store.get(job.id) == job
    assert [j.id for j in store.list()] == [job.id]
    assert not [p for p in (tmp_path / "models" / "_jobs").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("job_id", ["../models", "0" * 32, "abc", "0" * 31 + "/"])
def test_unknown_or_unsafe_ids_are_not_found(tmp_path: Path, job_id: str):
    store = JobStore(tmp_path)
    with pytest.raises(JobNotFound):
        store.get(job_id)
    with pytest.raises(JobNotFound):
        store.cancel(job_id)


def test_cancel_queued_job_and_finished_jobs_stay(tmp_path: Path):
    store = JobStore(tmp_path)
    job = store.create("sku-a", *upload(tmp_path), iterations=None)
    assert store.cancel(job.id).state == "cancelled"
    done = store.create("sku-b", *upload(tmp_path), iterations=None)
    store.update(done.id, state="succeeded", version=3)
    assert store.cancel(done.id).state == "succeeded"
    assert store.counts() == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0,
                              "cancelled": 1}


def test_finetune_command_follows_the_cli_contract(tmp_path: Path):
    store = JobStore(tmp_path / "models")
    job = store.create("sku-a", *upload(tmp_path, 5, 1), iterations=9)
    command = finetune_command(store, job, ("--set", "augment=none"))
    folder = store.folder(job.id)
    assert command[:4] == [sys.executable, "-m", "training.cli", "finetune"]
    pairs = dict(zip(command[4::2], command[5::2], strict=False))
    assert pairs["--images"] == str(folder / "images")
    assert pairs["--labels"] == str(folder / "labels")
    assert pairs["--out"] == str(folder / "run")
    assert pairs["--status-file"] == str(folder / "status.json")
    assert pairs["--iterations"] == "9" and pairs["--sku"] == "sku-a"
    assert pairs["--recipe"] == "compose"
    assert command[-3] == ("--refine" if DEFAULT_REFINE else "--no-refine")
    assert command[-2:] == ["--set", "augment=none"]
    job = store.create("sku-b", *upload(tmp_path, 5, 0), iterations=None, recipe="gan",
                       refine=False)
    command = finetune_command(store, job)
    assert command[-1] == "--no-refine" and "--labels" not in command
    assert dict(zip(command[4::2], command[5::2], strict=False))["--recipe"] == "gan"


def interrupted_job(store: JobStore, tmp_path: Path, checkpoint: bool, attempts: int = 1,
                    shutdowns: int = 0):
    """A job a dead server left `running`, its fine-tune process still alive."""
    job = store.create("sku-a", *upload(tmp_path), iterations=None)
    folder = store.folder(job.id)
    if checkpoint:
        (folder / "run" / "checkpoints").mkdir(parents=True)
        (folder / "run" / "checkpoints" / "latest.pt").write_bytes(b"x")
    # A process whose command line names the job folder, like a real orphaned fine-tune.
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                               str(folder)], start_new_session=True)
    store.update(job.id, state="running", pid=orphan.pid, attempts=attempts,
                 shutdowns=shutdowns, started_at=time.time())
    return job, orphan


@pytest.mark.parametrize(
    ("checkpoint", "attempts", "shutdowns", "state"),
    [
        (True, 1, 0, "queued"),  # resumes from its checkpoint
        (False, 1, 0, "queued"),  # starts over
        (True, MAX_ATTEMPTS, 0, "failed"),  # crashed too often
        (True, MAX_ATTEMPTS + 2, 3, "queued"),  # rolling updates are not held against it
    ],
)
def test_recover_kills_orphans_then_resumes_or_fails(
    tmp_path: Path, checkpoint: bool, attempts: int, shutdowns: int, state: str
):
    store = JobStore(tmp_path / "models")
    job, orphan = interrupted_job(store, tmp_path, checkpoint, attempts, shutdowns)
    JobRunner(store).recover()
    assert orphan.wait(timeout=10) != 0  # killed
    recovered = store.get(job.id)
    assert recovered.state == state and recovered.pid is None
    if state == "failed":
        assert "restart" in recovered.error


def test_stop_counts_a_shutdown_and_abandon_a_crash(tmp_path: Path):
    """A server shutdown (stop) leaves the job `running` with a shutdown counted, once; a dead
    server (abandon) kills the fine-tune at once and counts nothing."""
    store = JobStore(tmp_path / "models")
    job, orphan = interrupted_job(store, tmp_path, checkpoint=True)
    runner = JobRunner(store)
    runner.process, runner.job_id = orphan, job.id
    runner.stop()
    runner.stop()
    assert orphan.wait(timeout=10) == -signal.SIGTERM
    stored = store.get(job.id)
    assert (stored.state, stored.attempts, stored.shutdowns) == ("running", 1, 1)

    job, orphan = interrupted_job(store, tmp_path, checkpoint=True)
    runner = JobRunner(store)
    runner.process, runner.job_id = orphan, job.id
    runner.abandon()
    assert orphan.returncode == -signal.SIGKILL  # reaped before returning
    assert store.get(job.id).shutdowns == 0


def test_only_one_runner_holds_the_lock(tmp_path: Path):
    store = JobStore(tmp_path)
    first, second = JobRunner(store), JobRunner(store)
    assert first.try_lock()
    assert not second.try_lock()  # flock is per open file, so this holds within a process too
    first.lock_file.close()
    assert second.try_lock()
