"""The CPU threads of a worker: one pool for a request's images, and numpy's BLAS at one thread.

PNG encoding, composing and the generator's batch slices (`onnx_session.SlicedSession`) are
OpenCV, numpy and onnxruntime on whole images, which release the GIL, and each image stands
alone, so a request's images run on a pool of threads at once, made on first use and shared
by the worker's requests.

The pool has a thread for every CPU of the process (`devices.cpu_budget`), not the worker's
share of them (`devices.session_threads`, which sizes onnxruntime's intra-op threads): a
request that arrives while the other workers are idle then uses every CPU, and while all are
busy the kernel shares the CPUs among their pools. Measured with two workers on 2 CPUs, one
client asking n=64: compose 108 -> 146-155 img/s, gan 39-40 -> 59-71; 16 clients asking n=1:
compose 131-141 img/s either way (the generator keeps small batches to the worker's share:
`onnx_session.SlicedSession`).

numpy's OpenBLAS starts a thread per core for the judge's small matrix products, and those
threads spin for a while after each one, taking a core from the composing and onnxruntime
threads (measured: composing 16 images after a judged round took 9-10 ms an image against 5-6
with OpenBLAS at one thread, and the whole judged request 30 % less time).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from threadpoolctl import ThreadpoolController

from service.core.devices import cpu_budget

Item = TypeVar("Item")
Result = TypeVar("Result")

_pool: ThreadPoolExecutor | None = None  # None with one thread: items run in the caller
_threads = 0  # the pool's threads, one per CPU of the process, read on first use (0: not yet)
_lock = threading.Lock()


def _shared_pool() -> ThreadPoolExecutor | None:
    global _pool, _threads
    with _lock:
        if not _threads:
            _threads = cpu_budget()
            if _threads > 1:
                _pool = ThreadPoolExecutor(_threads, thread_name_prefix="cpu")
    return _pool


def pool_threads() -> int:
    """How many items `cpu_map` runs at once."""
    _shared_pool()
    return _threads


def cpu_map(fn: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
    """`[fn(item) for item in items]`, in order, the items spread over the pool's threads
    (one item, or one thread, runs here). `fn` must not call `cpu_map`: the pool's threads
    would wait on themselves."""
    items = list(items)
    pool = _shared_pool() if len(items) > 1 else None
    if pool is None:
        return [fn(item) for item in items]
    return list(pool.map(fn, items))


def single_threaded_blas() -> None:
    """Keep numpy's OpenBLAS to one thread in this process (torch's own threads untouched)."""
    ThreadpoolController().select(internal_api="openblas").limit(limits=1)
