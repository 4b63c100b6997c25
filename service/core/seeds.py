"""A request's stream of image seeds: image j's seed depends on the request's seed and j only.

So the images a seed names do not depend on how the stream is cut into batches: sampling may
take rounds of any size, and concurrent requests may share one batched call
(`service.core.batching`), and the same seed still gives the same images.
"""

from __future__ import annotations

import numpy as np


def stream(seed: int | None) -> int:
    """The stream a request's `seed` names; a fresh random one without a seed."""
    return int(np.random.SeedSequence().entropy % 2**63) if seed is None else int(seed)


def image_seeds(key: int, start: int, count: int) -> list[int]:
    """Seeds of images `start` … `start + count - 1` of stream `key`."""
    return [int(np.random.SeedSequence([key, j]).generate_state(1, np.uint64)[0])
            for j in range(start, start + count)]
