import threading
import time

import numpy as np
import pytest

from service.core.batching import Batcher


def doubling(calls: list[list[int]], delay: float = 0.05):
    def fn(items):
        calls.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError("negative item")
        time.sleep(delay)
        return np.asarray(items) * 2, [f"#{i}" for i in items]

    return fn


def run_concurrently(batcher: Batcher, jobs: list[tuple[str, list[int]]], fn) -> list:
    """Each job in its own thread, started while a first call holds the batcher."""
    results: list = [None] * len(jobs)

    def worker(index: int) -> None:
        key, items = jobs[index]
        try:
            results[index] = batcher.run(key, items, fn)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[index] = e

    blocker = threading.Thread(target=batcher.run, args=("block", [0], fn))
    blocker.start()
    time.sleep(0.01)  # the blocker's call is running: the jobs below queue behind it
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
        time.sleep(0.002)
    for t in [blocker, *threads]:
        t.join()
    return results


def test_queued_jobs_of_one_key_share_a_call_and_each_gets_its_own_slice():
    calls: list[list[int]] = []
    batcher = Batcher()
    jobs = [("a", [i, i + 100]) for i in range(8)]
    results = run_concurrently(batcher, jobs, doubling(calls))
    for (_, items), (doubled, names) in zip(jobs, results, strict=True):
        assert list(doubled) == [2 * i for i in items] and names == [f"#{i}" for i in items]
    assert len(calls) == 2  # the blocker's call, then all eight jobs in one
    assert batcher.stats.calls == 2 and batcher.stats.jobs == 9 and batcher.stats.items == 17


def test_keys_are_never_mixed_and_max_items_caps_a_call():
    calls: list[list[int]] = []
    batcher = Batcher(max_items=4)
    jobs = [("a", [1]), ("b", [2]), ("a", [3, 4]), ("a", [5, 6]), ("b", [7])]
    results = run_concurrently(batcher, jobs, doubling(calls))
    assert [list(r[0]) for r in results] == [[2], [4], [6, 8], [10, 12], [14]]
    merged = calls[1:]
    assert sorted(merged) == sorted([[1, 3, 4], [2, 7], [5, 6]])
    assert all(len(c) <= 4 for c in calls)


def test_a_failing_job_fails_alone():
    calls: list[list[int]] = []
    batcher = Batcher()
    results = run_concurrently(batcher, [("a", [1]), ("a", [-1]), ("a", [3])], doubling(calls))
    assert list(results[0][0]) == [2] and list(results[2][0]) == [6]
    assert isinstance(results[1], ValueError)


def test_a_lone_job_runs_alone_and_errors_reach_the_caller():
    batcher = Batcher()
    assert list(batcher.run("a", [3], doubling([], delay=0))[0]) == [6]
    assert batcher.stats.calls == 1 and batcher.stats.jobs == 1
    with pytest.raises(ValueError, match="negative"):
        batcher.run("a", [-3], doubling([]))
    with pytest.raises(ValueError, match="max_items"):
        Batcher(max_items=0)
