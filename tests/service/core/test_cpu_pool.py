import threading
import time

import pytest
from threadpoolctl import threadpool_info

from service.core import cpu_pool
from service.core.devices import THREADS_ENV, WORKERS_ENV


@pytest.mark.parametrize("threads", [1, 2])
def test_results_come_in_order_from_a_thread_per_cpu_of_the_process(monkeypatch,
                                                                    threads: int):
    monkeypatch.setattr(cpu_pool, "cpu_budget", lambda: threads)
    monkeypatch.setenv(THREADS_ENV, "1")  # onnxruntime's share: not the pool's size
    monkeypatch.setenv(WORKERS_ENV, "2")
    monkeypatch.setattr(cpu_pool, "_pool", None)
    monkeypatch.setattr(cpu_pool, "_threads", 0)  # made again, for this many threads
    names = set()

    def square(x: int) -> int:
        names.add(threading.current_thread().name)
        time.sleep(0.02)  # long enough for a second thread to take the next item
        return x * x

    assert cpu_pool.cpu_map(square, range(8)) == [x * x for x in range(8)]
    assert len(names) == threads
    assert cpu_pool.pool_threads() == threads
    assert cpu_pool.cpu_map(square, []) == []


def test_numpy_blas_runs_on_one_thread():
    cpu_pool.single_threaded_blas()
    blas = [i for i in threadpool_info() if i["internal_api"] == "openblas"]
    assert blas and all(i["num_threads"] == 1 for i in blas)
