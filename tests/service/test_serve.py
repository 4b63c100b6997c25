"""Starting the server: a worker ends itself once its `boxgen serve` process is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from service.core.repository import process_alive
from service.serve import SERVER_PID_ENV, ancestors, watch_server

ROOT = Path(__file__).resolve().parents[2]

# A "server" that starts a "worker" in a session of its own, as BentoML does, and waits.
SERVER = """
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]],
                          env={**os.environ, "BOXGEN_SERVER_PID": str(os.getpid())},
                          start_new_session=True)
print(worker.pid, flush=True)
time.sleep(120)
"""
WORKER = """
import sys, time
from pathlib import Path
from service.serve import watch_server
watch_server(lambda: Path(sys.argv[1]).write_text("cleaned up"), poll=0.1)
time.sleep(120)
"""


def test_a_worker_exits_when_its_server_is_killed(tmp_path: Path):
    marker = tmp_path / "gone"
    server = subprocess.Popen([sys.executable, "-c", SERVER, WORKER, str(marker)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    worker = int(server.stdout.readline())
    try:
        assert server.pid in ancestors(worker)
        time.sleep(0.5)  # the worker is watching
        assert process_alive(worker) and not marker.exists()
        os.killpg(server.pid, signal.SIGKILL)  # the group holds the server only
        server.wait()
        deadline = time.monotonic() + 10
        while process_alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not process_alive(worker)
        assert marker.read_text() == "cleaned up"  # on_gone ran first
    finally:
        for pid in (server.pid, worker):
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_nothing_is_watched_outside_a_server(monkeypatch):
    monkeypatch.delenv(SERVER_PID_ENV, raising=False)
    assert watch_server(lambda: None) is None
    monkeypatch.setenv(SERVER_PID_ENV, str(os.getpid()))  # the server process itself
    assert watch_server(lambda: None) is None
