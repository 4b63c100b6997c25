"""Start the BentoML server for `service.service:Boxgen`: `python -m service.serve`, which
`boxgen serve` runs in its own process (training never imports the HTTP layer).

Everything reaches the workers through environment variables, because BentoML starts each
worker as a fresh process that imports the service module: `BOXGEN_MODELS` (the repository),
`BOXGEN_API_KEY` / `BOXGEN_API_KEY_FILE`, and the worker count as a BentoML config override.
BentoML itself is kept offline (`BENTOML_DO_NOT_TRACK`) and its home (where it keeps the
Prometheus multiprocess files, wiped at every start) in a folder of ours.

Workers die with their server. BentoML starts each worker in a session of its own, so a
SIGKILL of `boxgen serve` (or of its process group) never reaches them, and a SIGTERM'd server
that gives up waiting for a worker leaves it behind. Such a worker went on listening on the dead
server's port, holding the job runner's lock and driving its fine-tune (measured: after a
restart, the job stayed `running` at attempt 1 for 10+ minutes). So `serve` passes its pid to the
workers (`BOXGEN_SERVER_PID`) and each worker runs `watch_server`, which ends it within a poll
once the server is no longer its ancestor. (A parent-death signal, prctl(PR_SET_PDEATHSIG),
would follow the thread that forked the worker rather than the server, and arrive as a
graceful SIGTERM that can wait on requests.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from service.core.devices import WORKERS_ENV

SERVICE = "service.service:Boxgen"
SERVICE_NAME = "boxgen"
SERVER_PID_ENV = "BOXGEN_SERVER_PID"  # the `boxgen serve` process, which workers die with
WATCH_SECONDS = 0.5  # how often a worker checks that its server still runs


def server_environment(
    models: Path,
    workers: int = 1,
    api_key: str | None = None,
    api_key_file: Path | None = None,
    home: Path | None = None,
) -> dict[str, str]:
    """The environment variables `serve` sets (also what a Kubernetes pod sets).

    BentoML's home is `home`, else $BENTOML_HOME, else a new temporary folder.
    """
    models = Path(models)
    if not models.is_dir():
        raise FileNotFoundError(f"model repository {models} does not exist or is not a folder")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if api_key_file is not None and not Path(api_key_file).is_file():
        raise FileNotFoundError(f"API key file {api_key_file} does not exist")
    if home is None and os.environ.get("BENTOML_HOME"):
        home = Path(os.environ["BENTOML_HOME"])
    if home is None:
        # One home per server: it holds the Prometheus files BentoML wipes at start, so two
        # servers sharing one would wipe each other's metrics.
        home = Path(tempfile.mkdtemp(prefix="boxgen-bentoml-"))
    overrides = os.environ.get("BENTOML_CONFIG_OPTIONS", "")
    env = {
        "BOXGEN_MODELS": str(models.resolve()),
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(Path(home).resolve()),
        "BENTOML_CONFIG_OPTIONS": f"{overrides} services.{SERVICE_NAME}.workers={workers}".strip(),
        WORKERS_ENV: str(workers),  # the workers share the CPUs (`onnx_session.session_threads`)
    }
    if api_key:
        env["BOXGEN_API_KEY"] = api_key
    if api_key_file is not None:
        env["BOXGEN_API_KEY_FILE"] = str(Path(api_key_file).resolve())
    return env


def serve(
    models: Path,
    port: int = 3000,
    host: str = "0.0.0.0",
    workers: int = 1,
    api_key: str | None = None,
    api_key_file: Path | None = None,
    home: Path | None = None,
) -> None:
    """Serve the API on `host`:`port` until interrupted (Ctrl+C or SIGTERM).

    `api_key` / `api_key_file` require that key on /generate, /finetune, /jobs and /models;
    prefer the file (a mounted secret) to a key on the command line, which `ps` shows.
    """
    own_home = home is None and not os.environ.get("BENTOML_HOME")
    env = server_environment(models, workers, api_key, api_key_file, home)
    os.environ.update(env)
    os.environ[SERVER_PID_ENV] = str(os.getpid())
    import bentoml  # after BENTOML_HOME is set: BentoML reads it at import

    package_root = Path(__file__).resolve().parent.parent
    try:
        bentoml.serve(SERVICE, working_dir=str(package_root), host=host, port=port,
                      blocking=True)
    finally:
        if own_home:  # the temporary home made for this server holds nothing worth keeping
            shutil.rmtree(env["BENTOML_HOME"], ignore_errors=True)


def ancestors(pid: int) -> list[int]:
    """The parent, grandparent, ... of process `pid`, up to (without) pid 1."""
    chain = []
    while pid > 1:
        try:  # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            break
        if pid > 1:
            chain.append(pid)
    return chain


def watch_server(on_gone: Callable[[], None], poll: float = WATCH_SECONDS
                 ) -> threading.Thread | None:
    """In a worker of `boxgen serve`: once that server is gone (no longer an ancestor of this
    process: killed, or stopped without us), call `on_gone` and end this process at once.

    Returns the watching daemon thread; None outside a server of ours (no BOXGEN_SERVER_PID).
    """
    raw = os.environ.get(SERVER_PID_ENV, "")
    if not raw.isdigit() or int(raw) == os.getpid():  # not a worker, or the server itself
        return None
    server = int(raw)
    if Path("/proc/self/stat").is_file():

        def alive() -> bool:
            # A dead process's children are re-parented at once, even while it is a zombie.
            return server in ancestors(os.getpid())
    else:  # no /proc (macOS): the parent this worker started with
        parent = os.getppid()

        def alive() -> bool:
            return os.getppid() == parent

    def watch() -> None:
        while alive():
            time.sleep(poll)
        try:
            on_gone()
        finally:
            print(f"boxgen serve (pid {server}) is gone; worker {os.getpid()} exits",
                  file=sys.stderr, flush=True)
            os._exit(1)  # other threads may block in requests; nothing here is worth waiting for

    thread = threading.Thread(target=watch, name="boxgen-server-watch", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    """`python -m service.serve --models DIR [--port P] [--host H] [--workers N]
    [--api-key-file F]`; a missing folder or file is one line on stderr and exit status 1."""
    parser = argparse.ArgumentParser(prog="boxgen serve", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--api-key-file", type=Path)
    args = parser.parse_args(argv)
    try:
        serve(args.models, port=args.port, host=args.host, workers=args.workers,
              api_key_file=args.api_key_file)
    except (FileNotFoundError, ValueError) as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
