"""Durable fine-tune jobs: records on the model volume, one `boxgen finetune` process at a time.

Layout, beside the models so a restart (or another pod on the same volume) sees every job::

    <models>/_jobs/runner.lock            held (flock) by the one process that runs jobs
    <models>/_jobs/<job_id>/job.json      the record, rewritten atomically (temp, fsync, rename)
    <models>/_jobs/<job_id>/images/       the uploaded photos (and labels/ when given)
    <models>/_jobs/<job_id>/run/          the training run folder: checkpoints, resumable
    <models>/_jobs/<job_id>/status.json   progress written by the fine-tune (FinetuneStatus)
    <models>/_jobs/<job_id>/log.txt       its stdout and stderr

Every service worker can create, read and cancel jobs; only the worker holding `runner.lock`
runs them, so jobs run one at a time per volume whatever the worker count. The lock dies with
its holder, so another worker takes over if that worker dies.

The fine-tune runs as its own process group (`python -m training.cli finetune ...`), so serving
goes on while it trains, a crash cannot take the server down, and cancel kills the whole group.
On taking the lock, the runner recovers jobs left `running` by a previous holder: their process
is killed if it survived, and the job is queued again to resume from its last checkpoint (or to
start over without one). Kubernetes can run the same command as a Job (`finetune_command`).

Interruptions: `attempts` counts starts. A start that a server shutdown stopped (SIGTERM: a
rolling update, a scale-down; `JobRunner.stop`) also counts in `shutdowns` and is not held
against the job. Any other end (the server or worker killed, the fine-tune killed by the OOM
killer) is a crash: after MAX_ATTEMPTS starts that crashed, the job fails instead of taking the
server down again and again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from service import metrics
from service.core.atomic import read_json, write_json_atomic
from service.core.cards import DEFAULT_RECIPE, DEFAULT_REFINE, STATUS_FILE, FinetuneStatus
from service.core.repository import ModelRepository, staging_folder
from service.security import UploadedFile

JOBS_DIR = "_jobs"
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATES: tuple[str, ...] = get_args(JobState)
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_ATTEMPTS = 3  # starts of one job that may crash (shutdowns do not count) before it fails
KILL_GRACE_SECONDS = 10.0
SHUTDOWN_GRACE_SECONDS = 5.0  # how long a signalled fine-tune waits for a server shutdown


class JobNotFound(LookupError):
    """No job with that id."""


@dataclass
class Job:
    """One fine-tune job, as stored in job.json."""

    id: str
    sku: str
    state: str
    created_at: float
    images: int
    labels: int = 0
    iterations: int | None = None  # None: the fine-tune's default
    recipe: str = "gan"  # jobs stored before recipes existed were gan fine-tunes
    refine: bool = DEFAULT_REFINE  # compose: train the refiner
    empty: str | None = None  # the uploaded empty-bin photo's file name, under empty/
    started_at: float | None = None
    finished_at: float | None = None
    version: int | None = None  # published on success
    report: dict[str, Any] | None = None  # the new version's evaluation report
    error: str | None = None
    pid: int | None = None  # process group of the running fine-tune
    attempts: int = 0  # starts: the first run and every resume
    shutdowns: int = 0  # starts a server shutdown stopped (not held against the job)
    progress: dict[str, Any] = field(default_factory=dict)  # latest status.json


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive flock on `path` for a read-modify-write shared by workers and threads."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class JobStore:
    """Job records under `<models>/_jobs`."""

    def __init__(self, models: str | os.PathLike[str]):
        self.models = Path(models)
        self.root = self.models / JOBS_DIR

    def folder(self, job_id: str) -> Path:
        if not JOB_ID.fullmatch(job_id):
            raise JobNotFound(f"no job {job_id!r}")
        return self.root / job_id

    def create(self, sku: str, images: list[UploadedFile], labels: list[UploadedFile],
               iterations: int | None, recipe: str = DEFAULT_RECIPE,
               empty: UploadedFile | None = None, refine: bool = DEFAULT_REFINE) -> Job:
        """Store the uploads and a queued record; the job becomes visible only when complete."""
        self.root.mkdir(parents=True, exist_ok=True)
        job = Job(id=uuid.uuid4().hex, sku=sku, state="queued", created_at=time.time(),
                  images=len(images), labels=len(labels), iterations=iterations, recipe=recipe,
                  refine=refine,
                  empty=empty.name if empty is not None else None)
        staging = staging_folder(self.root)
        try:
            uploads = (("images", images), ("labels", labels), ("empty", [empty] if empty else []))
            for sub, files in uploads:
                if files:
                    (staging / sub).mkdir()
                for upload in files:
                    shutil.copyfile(upload.path, staging / sub / upload.name)
            write_json_atomic(staging / "job.json", dataclasses.asdict(job))
            os.rename(staging, self.root / job.id)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        metrics.FINETUNE_JOBS_TOTAL.labels(state="queued").inc()
        return job

    def get(self, job_id: str) -> Job:
        folder = self.folder(job_id)
        record = read_json(folder / "job.json")
        if not record:
            raise JobNotFound(f"no job {job_id!r}")
        job = Job(**{k: v for k, v in record.items() if k in Job.__dataclass_fields__})
        if job.state == "running":
            job.progress = read_json(folder / STATUS_FILE)
        return job

    def list(self) -> list[Job]:
        """Every job, oldest first."""
        if not self.root.is_dir():
            return []
        jobs = []
        for folder in self.root.iterdir():
            if JOB_ID.fullmatch(folder.name):
                with contextlib.suppress(JobNotFound):
                    jobs.append(self.get(folder.name))
        return sorted(jobs, key=lambda j: j.created_at)

    def update(self, job_id: str, only_from: tuple[str, ...] = STATES, **changes: Any) -> Job:
        """Apply `changes` under the job's lock, unless its state is not in `only_from`."""
        folder = self.folder(job_id)
        self.get(job_id)  # JobNotFound before creating a lock file in a missing folder
        with file_lock(folder / ".lock"):
            job = self.get(job_id)
            if job.state not in only_from:
                return job
            job = dataclasses.replace(job, **changes)
            write_json_atomic(folder / "job.json", dataclasses.asdict(job))
        if "state" in changes:
            metrics.FINETUNE_JOBS_TOTAL.labels(state=job.state).inc()
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (killing its process group); finished jobs stay."""
        job = self.update(job_id, only_from=("queued", "running"), state="cancelled",
                          finished_at=time.time(), error="cancelled by request")
        if job.state == "cancelled" and job.pid:
            kill_group(job.pid, signal.SIGTERM)
        return job

    def counts(self) -> dict[str, int]:
        jobs = self.list()
        return {state: sum(j.state == state for j in jobs) for state in STATES}


def kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def finetune_command(store: JobStore, job: Job, extra_args: tuple[str, ...] = ()) -> list[str]:
    """The `boxgen finetune` command that runs `job` (rerunning it resumes from `run/`)."""
    folder = store.folder(job.id)
    command = [
        sys.executable, "-m", "training.cli", "finetune",
        "--images", str(folder / "images"),
        "--sku", job.sku,
        "--models", str(store.models),
        "--out", str(folder / "run"),
        "--status-file", str(folder / STATUS_FILE),
        "--recipe", job.recipe,
    ]
    if job.empty is not None:
        command += ["--empty", str(folder / "empty" / job.empty)]
    if job.labels:
        command += ["--labels", str(folder / "labels")]
    if job.iterations is not None:
        command += ["--iterations", str(job.iterations)]
    command.append("--refine" if job.refine else "--no-refine")
    return command + list(extra_args)


def crashes(job: Job) -> int:
    """Starts of `job` that ended other than by a server shutdown (or are still running)."""
    return job.attempts - job.shutdowns


def last_line(path: Path, default: str) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except FileNotFoundError:
        return default
    lines = [line for line in lines if line]
    return lines[-1][:500] if lines else default


class JobRunner:
    """Runs queued jobs one at a time in a daemon thread, while this process holds the lock."""

    def __init__(self, store: JobStore, extra_args: tuple[str, ...] = (), poll: float = 0.5):
        self.store = store
        self.extra_args = extra_args
        self.poll = poll
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="boxgen-job-runner", daemon=True)
        self.lock_file: Any = None
        self.process: subprocess.Popen[bytes] | None = None
        self.job_id: str | None = None  # the job `process` runs

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """The server shuts down: stop taking jobs and stop a running fine-tune, leaving it
        `running` so that the next runner resumes it from its last checkpoint (an orphan would
        publish unattended). The start counts as a shutdown, not a crash."""
        self.stopping.set()
        process, job_id, self.job_id = self.process, self.job_id, None  # mark a start once
        # Marked even when the fine-tune is already gone: BentoML's process manager may have
        # signalled it before this hook ran.
        if job_id is not None:
            with contextlib.suppress(JobNotFound):
                job = self.store.get(job_id)
                self.store.update(job_id, only_from=("running",), shutdowns=job.shutdowns + 1)
        if process is not None and process.poll() is None:
            kill_group(process.pid, signal.SIGTERM)

    def abandon(self) -> None:
        """The server died without stopping this worker: kill the fine-tune now and leave its job
        `running` for the next runner, which resumes it (the start counts as a crash)."""
        self.stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            kill_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(KILL_GRACE_SECONDS)

    @property
    def is_runner(self) -> bool:
        return self.lock_file is not None

    def try_lock(self) -> bool:
        self.store.root.mkdir(parents=True, exist_ok=True)
        f = open(self.store.root / "runner.lock", "a")  # noqa: SIM115 (held for our lifetime)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self.lock_file = f
        return True

    def loop(self) -> None:
        while not self.stopping.is_set() and not self.try_lock():
            self.stopping.wait(2.0)  # another worker runs jobs; take over if it dies
        if self.stopping.is_set():
            return
        self.recover()
        while not self.stopping.is_set():
            self.publish_counts()
            queued = [j for j in self.store.list() if j.state == "queued"]
            if queued:
                self.run(queued[0])
            else:
                self.stopping.wait(self.poll)

    def publish_counts(self) -> None:
        for state, count in self.store.counts().items():
            metrics.FINETUNE_JOBS.labels(state=state).set(count)

    def recover(self) -> None:
        """Jobs a dead runner left `running`: kill what survived, then resume or fail them.
        Also deletes the staging folders killed publishers and uploads left."""
        ModelRepository(self.store.models).remove_abandoned_staging()
        for job in self.store.list():
            if job.state != "running":
                continue
            folder = self.store.folder(job.id)
            if job.pid and is_job_process(job.pid, folder):
                kill_group(job.pid, signal.SIGKILL)
            self.resume_or_fail(job, f"interrupted by a server restart; crashed "
                                     f"{crashes(job)} times")

    def run(self, job: Job) -> None:
        """Run one job's fine-tune process to its end (or its cancellation)."""
        folder = self.store.folder(job.id)
        with open(folder / "log.txt", "ab") as log:
            process = subprocess.Popen(
                finetune_command(self.store, job, self.extra_args),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: cancel kills all of it
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        job = self.store.update(job.id, only_from=("queued",), state="running", pid=process.pid,
                                started_at=job.started_at or time.time(),
                                attempts=job.attempts + 1)
        if job.state != "running":  # cancelled between listing and starting
            kill_group(process.pid, signal.SIGKILL)
            process.wait()
            return
        self.process, self.job_id = process, job.id
        self.publish_counts()
        killed_at: float | None = None
        while process.poll() is None:
            time.sleep(self.poll)
            if self.store.get(job.id).state == "cancelled":  # cancelled from any worker
                if killed_at is None:
                    killed_at = time.time()
                    kill_group(process.pid, signal.SIGTERM)
                elif time.time() - killed_at > KILL_GRACE_SECONDS:
                    kill_group(process.pid, signal.SIGKILL)
        if process.returncode < 0 and self.store.get(job.id).state == "running":
            self.interrupted(job, -process.returncode, folder)
        else:
            self.finish(job, process.returncode, folder)
        self.process = self.job_id = None

    def interrupted(self, job: Job, signum: int, folder: Path) -> None:
        """A signal we did not send for a cancel ended the fine-tune.

        A server shutdown signals the whole worker tree (BentoML's process manager stops
        children too): then the job stays `running` and the next runner resumes it. Otherwise
        (e.g. the kernel's OOM killer) it is queued again to resume, or fails after
        MAX_ATTEMPTS starts that crashed.
        """
        if self.stopping.wait(SHUTDOWN_GRACE_SECONDS):
            return
        self.resume_or_fail(self.store.get(job.id), f"fine-tune killed by signal {signum}; "
                            + last_line(folder / "log.txt", "no output"))
        self.publish_counts()

    def resume_or_fail(self, job: Job, error: str) -> None:
        """An interrupted `running` job: queued again to resume from its last checkpoint (or
        start over), or failed with `error` once MAX_ATTEMPTS of its starts crashed."""
        if crashes(job) < MAX_ATTEMPTS:
            self.store.update(job.id, only_from=("running",), state="queued", pid=None)
        else:
            self.store.update(job.id, only_from=("running",), state="failed", pid=None,
                              finished_at=time.time(), error=error)

    def finish(self, job: Job, returncode: int, folder: Path) -> None:
        now = time.time()
        raw = read_json(folder / STATUS_FILE)
        status = FinetuneStatus.model_validate(raw)
        if returncode == 0 and status.version is not None:
            report = status.report or (status.card or {}).get("evaluation")
            done = self.store.update(job.id, only_from=("running",), state="succeeded", pid=None,
                                     finished_at=now, version=status.version,
                                     report=report, progress=raw)
        else:
            error = (f"fine-tune exited with status {returncode}: "
                     + last_line(folder / "log.txt", "no output"))
            if returncode == 0:
                error = "fine-tune finished without reporting a published version"
            done = self.store.update(job.id, only_from=("running",), state="failed", pid=None,
                                     finished_at=now, error=error, progress=raw)
        if done.state in ("succeeded", "failed") and done.started_at:
            metrics.FINETUNE_DURATION.observe(now - done.started_at)
        self.publish_counts()


def is_job_process(pid: int, folder: Path) -> bool:
    """True when `pid` is alive and is this job's fine-tune (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return str(folder).encode() in cmdline
