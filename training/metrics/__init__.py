"""Distribution and novelty metrics, one file each; `METRICS` maps report names to them.

Each module exports `compute(...) -> dict[str, float]`:

- `kid`: KID on features (`features.image_features`, an offline random CNN).
- `coverage`: precision, recall, density, coverage on the same features.
- `novelty`: quantiles of `service.core.selection` novelty and the copy fraction.
- `fid`: FID, only with a user-supplied Inception-v3 weights file (no downloads).
"""

from __future__ import annotations

from collections.abc import Callable

from training.metrics import coverage, fid, kid, novelty

METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "kid": kid.compute,
    "coverage": coverage.compute,
    "novelty": novelty.compute,
    "fid": fid.compute,
}

__all__ = ["METRICS", "coverage", "fid", "kid", "novelty"]
