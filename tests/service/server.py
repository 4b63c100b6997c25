"""Test helpers: a tiny published model repository, and a real boxgen server on a free port.

Reusable by any test that needs the live service (e.g. the deployment tests' /metrics check)::

    from tests.service.server import BoxgenServer, tiny_repository

    models = tiny_repository(tmp_path / "models")          # labeller + SKU "demo" (+ base)
    with BoxgenServer(models, workers=2) as server:        # waits for /readyz
        httpx.get(server.url + "/metrics")

The expensive part (a YOLO labeller, a tiny exported generator, a tiny pretrained base) is
built once per test process into a template and copied per call.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from service.core.ports import free_port
from service.core.repository import LABELLER, process_alive

ROOT = Path(__file__).resolve().parents[2]
DEMO_SKU = "demo"
PHOTO_GROUP = 10  # the product group the test labeller was trained on (selection_fixtures)
Z_DIM = 16
STARTUP_TIMEOUT = 90.0

_template: Path | None = None


def render_corpus(out: Path, groups: int = 4, per_group: int = 8, size: int = 64,
                  first_group: int = 0) -> Path:
    from training.render import write_corpus

    return write_corpus(out, groups, per_group, (size, size), seed=0, first_group=first_group)


def publish_tiny_generator(models: Path, sku: str = DEMO_SKU, seed: int = 0,
                           card: dict | None = None, files: dict | None = None) -> int:
    """A real (untrained) 32² generator exported to ONNX and published with `files` beside it;
    returns its version."""
    import torch

    from service.core.cards import GeneratorCard
    from service.core.repository import ModelRepository
    from training.export import export_onnx
    from training.networks import Generator

    torch.manual_seed(seed)
    generator = Generator(z_dim=Z_DIM, resolution=32, base_channels=8, max_channels=32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generator.onnx"
        parity = export_onnx(generator, path)
        version = ModelRepository(models).publish(
            sku, {"generator.onnx": path, **(files or {})},
            GeneratorCard(generator_args=generator.init_args(), onnx_parity_max_abs=parity,
                          **(card or {})),
        )
    return version.version


def publish_tiny_base(models: Path, corpus: Path, work: Path) -> None:
    """A `tiny`-profile pretraining run (a few steps) published as the fine-tune base."""
    from training.config import profile
    from training.pretrain import pretrain, publish_pretrained

    cfg = profile("tiny").replace(iterations=4)
    pretrain(cfg, corpus, work / "pretrain", progress=False)
    publish_pretrained(work / "pretrain", models)


def build_template(root: Path) -> Path:
    """Labeller: the selection tests' one-group labeller (it finds group 10's products at high
    confidence, which fine-tunes need to calibrate selection; built once per session and
    shared with those tests). Generator: untrained 32². Base: a few `tiny` steps."""
    from tests.selection_fixtures import models as selection_models

    models = root / "models"
    shutil.copytree(selection_models() / LABELLER, models / LABELLER)
    corpus = render_corpus(root / "corpus")
    publish_tiny_generator(models)
    try:
        publish_tiny_base(models, corpus, root)
    except ImportError:  # training.data not there yet: no fine-tunes, generation still works
        pass
    return models


def tiny_repository(dest: Path) -> Path:
    """A copy of the tiny template repository at `dest` (built on first use)."""
    global _template
    if _template is None:
        _template = build_template(Path(tempfile.mkdtemp(prefix="boxgen-test-models-")))
    shutil.copytree(_template, dest)
    return dest


def photos(out: Path, count: int = 10, size: int = 64, first_group: int = PHOTO_GROUP) -> Path:
    """`count` photos of one product group (the labeller's), with YOLO labels."""
    return render_corpus(out, groups=1, per_group=count, size=size, first_group=first_group)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`: a server's workers and their fine-tunes, which BentoML and the
    job runner start in sessions of their own (so a process group does not hold them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_survivors(pids: list[int], timeout: float = 0.0) -> list[int]:
    """Wait up to `timeout` for `pids` to end, SIGKILL those still running; returns those."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if process_alive(pid)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class BoxgenServer:
    """`serve()` in a subprocess (its own process group) on a free localhost port."""

    def __init__(self, models: Path, workers: int = 1, api_key: str | None = None,
                 env: dict[str, str] | None = None, log: Path | None = None):
        self.models = Path(models)
        self.workers = workers
        self.api_key = api_key
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log or Path(tempfile.mkstemp(prefix="boxgen-server-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def start(self) -> BoxgenServer:
        code = (
            "import sys; from pathlib import Path; from service.serve import serve; "
            f"serve(Path({str(self.models)!r}), port={self.port}, host='127.0.0.1', "
            f"workers={self.workers}, api_key={self.api_key!r})"
        )
        env = {**os.environ, "BOXGEN_DEVICE": "cpu", **self.env}
        env.pop("BOXGEN_API_KEY", None)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout:.0f} s:\n{self.log()}")

    def processes(self) -> list[int]:
        """The server process and every process below it (workers, fine-tunes), right now."""
        if self.process is None or self.process.poll() is not None:
            return []
        return [self.process.pid, *descendants(self.process.pid)]

    def kill(self, sig: int, group: bool = True) -> list[int]:
        """Send `sig` to the server's process group (or the server process alone), as a fault
        or an orchestrator would; returns `processes()` as they were just before, to check that
        none outlives it."""
        assert self.process is not None
        before = self.processes()
        (os.killpg if group else os.kill)(self.process.pid, sig)
        return before

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's process group (graceful), SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        workers = descendants(self.process.pid)
        os.killpg(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # BentoML's workers can outlive the main process by a moment; one still shutting down
        # could take the job runner's lock from the next server. Stopped means all of them gone.
        while group_alive(self.process.pid):
            if time.monotonic() > deadline:
                os.killpg(self.process.pid, signal.SIGKILL)
            time.sleep(0.1)
        # Workers and fine-tunes are in sessions of their own: the group does not cover them.
        kill_survivors(workers, max(deadline - time.monotonic(), 1.0))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def __enter__(self) -> BoxgenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
