"""Load: many concurrent clients are all served, and past the admission limit a burst is
refused at once with 503 + Retry-After instead of waiting.

Two real servers on the tiny repository: one with the default limit (BOXGEN_MAX_IN_FLIGHT 64
per worker) takes 32 clients x 10 requests; one with a limit of 1 takes a burst. Figures are
printed for the README; nothing asserts on speed except the generous bound on a refusal.
"""

from __future__ import annotations

import functools
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.service.server import DEMO_SKU, BoxgenServer, tiny_repository

CLIENTS = 32
REQUESTS_PER_CLIENT = 10
BURST = 8
PROMPT_REFUSAL_SECONDS = 2.0  # a refusal does no work; 2 s is generous on a busy CPU


def start(root: Path, env: dict[str, str] | None = None) -> BoxgenServer:
    return BoxgenServer(tiny_repository(root / "models"), env=env,
                        log=root / "server.log").start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    running = start(tmp_path_factory.mktemp("load"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory):
    running = start(tmp_path_factory.mktemp("admission"), {"BOXGEN_MAX_IN_FLIGHT": "1"})
    yield running
    running.stop()


def metric_value(server: BoxgenServer, name: str, labels: str = "") -> float:
    """Sum of the samples of `name` on /metrics whose labels contain `labels`."""
    return sum(float(line.rsplit(" ", 1)[1])
               for line in httpx.get(server.url + "/metrics").text.splitlines()
               if line.startswith(name + "{") and labels in line)


def settled(read: Callable[[], float], expected: float, timeout: float = 10.0) -> float:
    """`read()` once it equals `expected`, or its last value after `timeout` (metrics files
    are written as the answer leaves, so a scrape right after can be a moment behind)."""
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def timed_generate(client: httpx.Client, n: int, seed: int) -> tuple[httpx.Response, float]:
    begin = time.perf_counter()
    response = client.post("/generate", json={"sku": DEMO_SKU, "n": n, "seed": seed,
                                              "select": "none"})
    return response, time.perf_counter() - begin


def test_32_concurrent_clients_are_all_served(server: BoxgenServer,
                                              capsys: pytest.CaptureFixture[str]):
    ok = 'endpoint="generate",sku="demo",status="200"'
    before = metric_value(server, "boxgen_requests_total", ok)

    def client_session(index: int) -> list[tuple[int, float]]:
        with server.client() as client:
            return [(r.status_code, seconds) for r, seconds in
                    (timed_generate(client, 2, index * 100 + i)
                     for i in range(REQUESTS_PER_CLIENT))]

    begin = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for session in pool.map(client_session, range(CLIENTS)) for r in session]
    wall = time.perf_counter() - begin

    statuses = [status for status, _ in results]
    latencies = sorted(seconds for _, seconds in results)
    with capsys.disabled():
        print(f"\nload: {CLIENTS} clients x {REQUESTS_PER_CLIENT} /generate (n=2): "
              f"{statuses.count(200)}/{len(results)} answered 200 in {wall:.1f} s "
              f"({len(results) / wall:.0f} req/s), latency p50 "
              f"{statistics.median(latencies):.2f} s, p95 "
              f"{latencies[int(0.95 * len(latencies))]:.2f} s")
    assert statuses == [200] * CLIENTS * REQUESTS_PER_CLIENT
    served = settled(lambda: metric_value(server, "boxgen_requests_total", ok) - before,
                     len(results))
    assert served == len(results)
    assert metric_value(server, "boxgen_requests_rejected_total") == 0
    assert settled(lambda: metric_value(server, "boxgen_requests_in_flight"), 0) == 0


def test_past_the_limit_a_burst_is_refused_at_once_with_retry_after(
    strict_server: BoxgenServer, capsys: pytest.CaptureFixture[str]
):
    """With one /generate allowed in flight, a burst sent at the same instant gets one or a
    few 200s (each request takes a while at n=64) and prompt 503s for the rest."""
    clients = [strict_server.client(timeout=60) for _ in range(BURST)]
    for client in clients:  # connect first, so the requests leave together
        assert client.get("/livez").status_code == 200
    barrier = threading.Barrier(BURST)

    def send(index: int) -> tuple[httpx.Response, float]:
        barrier.wait()
        return timed_generate(clients[index], 64, index)

    with ThreadPoolExecutor(BURST) as pool:
        results = list(pool.map(send, range(BURST)))
    for client in clients:
        client.close()

    served = [seconds for r, seconds in results if r.status_code == 200]
    refused = [(r, seconds) for r, seconds in results if r.status_code == 503]
    with capsys.disabled():
        print(f"\nadmission (BOXGEN_MAX_IN_FLIGHT=1): burst of {BURST}: {len(served)} served "
              f"(slowest {max(served):.2f} s), {len(refused)} refused with 503 (slowest "
              f"{max((s for _, s in refused), default=0):.3f} s)")
    assert len(served) + len(refused) == BURST, [r.status_code for r, _ in results]
    assert served and refused
    for response, seconds in refused:
        assert response.headers["retry-after"] == "1"
        assert response.json()["field"] is None
        assert "BOXGEN_MAX_IN_FLIGHT" in response.json()["error"]
        assert seconds < PROMPT_REFUSAL_SECONDS

    for name, labels in (("boxgen_requests_rejected_total",
                          'endpoint="generate",reason="overload"'),
                         ("boxgen_requests_total", 'endpoint="generate",sku="",status="503"')):
        counted = settled(functools.partial(metric_value, strict_server, name, labels),
                          len(refused))
        assert counted == len(refused), name
    # The slot is given back: the next request is served, and nothing stays in flight.
    with strict_server.client() as client:
        assert timed_generate(client, 1, 0)[0].status_code == 200
    assert settled(lambda: metric_value(strict_server, "boxgen_requests_in_flight"), 0) == 0
