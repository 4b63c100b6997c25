"""Cross-request batching: concurrent requests for one model share its onnxruntime calls.

Robot software asks for a few images at a time from many clients. Run one by one, each request
pays a whole network call for a batch of one or two; onnxruntime already spreads one call over
every core, so running them side by side only contends. `Batcher.run` runs one call at a time
per worker (what the inference lock did) and, while one runs, queues the others: the next call
takes the oldest waiting job and every queued job for the same model (the same key), up to
`max_items`, runs them as one batch and hands each job its slice. No job waits for company: a
lone request runs at once; batches form only while the worker is busy, so the added wait is
bounded by one call.

Results must not depend on the batch a job lands in: the sessions draw image j of a request
from its own seed (`service.core.seeds`), and the labeller labels each image on its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(eq=False)
class _Job:
    key: Hashable
    items: Sequence[Any]
    fn: Callable[[Sequence[Any]], Any]
    done: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """Calls made and jobs they served: jobs / calls is the mean merge."""

    calls: int = 0
    jobs: int = 0
    items: int = 0


def _concat(parts: list[Sequence[Any]]) -> Sequence[Any]:
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    return [item for part in parts for item in part]


def _split(result: Any, sizes: list[int]) -> list[Any]:
    """`result` (an array, a list, or a tuple of them, one entry per item) cut into `sizes`."""
    if isinstance(result, tuple):
        columns = [_split(column, sizes) for column in result]
        return [tuple(column[i] for column in columns) for i in range(len(sizes))]
    if len(result) != sum(sizes):
        raise RuntimeError(f"a batched call returned {len(result)} results for "
                           f"{sum(sizes)} items")
    bounds = np.cumsum([0, *sizes])
    return [result[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class Batcher:
    """Runs `fn(items)` for concurrent callers one call at a time, merging same-key jobs."""

    def __init__(self, max_items: int = 256,
                 observe: Callable[[Hashable, int], None] | None = None):
        """`observe(key, jobs)` is called after each call (the service's metrics)."""
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.max_items = max_items
        self.observe = observe
        self.stats = BatchStats()
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)
        self._queue: list[_Job] = []
        self._busy = False

    def run(self, key: Hashable, items: Sequence[Any], fn: Callable[[Sequence[Any]], Any]
            ) -> Any:
        """`fn(items)`, maybe computed as part of a larger `fn` call over other callers' items
        of the same `key` (the same `fn` must suit all of them). `fn` returns one entry per
        item: an array, a list, or a tuple of them. Raises what `fn` raised for these items."""
        job = _Job(key, items, fn)
        with self._lock:
            self._queue.append(job)
            while not job.done:
                if self._busy:
                    self._free.wait()
                    continue
                batch = self._take()
                self._busy = True
                self._lock.release()
                try:
                    self._execute(batch)
                finally:
                    self._lock.acquire()
                    self._busy = False
                    self._free.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self) -> list[_Job]:
        """The oldest job and the queued jobs of its key, up to `max_items` items."""
        first = self._queue[0]
        batch, total = [first], len(first.items)
        for job in self._queue[1:]:
            if job.key == first.key and total + len(job.items) <= self.max_items:
                batch.append(job)
                total += len(job.items)
        self._queue = [job for job in self._queue if job not in batch]
        return batch

    def _execute(self, batch: list[_Job]) -> None:
        sizes = [len(job.items) for job in batch]
        try:
            results = _split(batch[0].fn(_concat([job.items for job in batch])), sizes)
        except Exception as e:
            if len(batch) > 1:  # whose items failed? each job alone, so only theirs fail
                for job in batch:
                    self._execute([job])
                return
            results, batch[0].error = [None], e
        for job, result in zip(batch, results, strict=True):
            job.result = result
        with self._lock:
            self.stats.calls += 1
            self.stats.jobs += len(batch)
            self.stats.items += sum(sizes)
        for job in batch:
            job.done = True
        if self.observe is not None:
            self.observe(batch[0].key, len(batch))
