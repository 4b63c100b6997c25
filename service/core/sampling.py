"""Sampling until enough generated images pass selection, in seeded rounds."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.novelty import distances, novelty_features
from service.core.selector import ImageScore, Selector, passes


@dataclass
class SelectionResult:
    """What `sample_selected` returns: up to n passing images and how many it generated."""

    images: np.ndarray  # [k, H, W, 3] uint8, k <= n
    detections: list[Any]
    scores: list[ImageScore]
    tried: int  # images generated in all
    passed_fraction: float  # passing / tried
    complete: bool  # k == n
    message: str


def round_seed(seed: int | None, round_index: int, entropy: int) -> int:
    """The generator seed of one oversampling round, derived from the request's seed."""
    base = [seed] if seed is not None else [entropy]
    return int(np.random.SeedSequence([*base, round_index]).generate_state(1)[0])


def sample_selected(
    generate: Callable[[int, int], np.ndarray | tuple[np.ndarray, list[Any]]],
    label: Callable[[np.ndarray], list[Any]],
    selector: Selector,
    n: int,
    seed: int | None = None,
    select: str = "green",
    max_tries: int | None = None,
    max_batch: int = 256,
    distinct: bool = True,
) -> SelectionResult:
    """Generate, label and score in rounds until `n` images pass `select`, or the budget ends.

    `generate(k, seed)` returns k uint8 NHWC images, or (images, labels) for images built
    with labels (compose: one `Detections` each, which are then served, and checked against
    the labeller's); `label(images)` returns one detections object per image. Round r uses
    `round_seed(seed, r)`, so the same seed gives the same images. Each
    round asks for what is missing divided by the pass rate seen so far (+20 %), at most
    `max_batch`; at most `max_tries` images (default 20 × n) are generated. With `distinct`,
    an image within the copy threshold of one already accepted is rejected too (a collapsed
    generator repeating one new image does not fill the request). Returns fewer than n images
    when the budget runs out, and says so in `message`.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    passes(ImageScore(0, 0, 0, "red", 0, ""), select)  # validates `select`
    budget = 20 * n if max_tries is None else int(max_tries)
    if budget < n:
        raise ValueError(f"max_tries ({budget}) must be at least n ({n})")
    entropy = int(np.random.SeedSequence().entropy % 2**63) if seed is None else 0
    kept_images: list[np.ndarray] = []
    kept_det: list[Any] = []
    kept_scores: list[ImageScore] = []
    kept_features: list[np.ndarray] = []
    tried, round_index = 0, 0
    while len(kept_images) < n and tried < budget:
        missing = n - len(kept_images)
        rate = len(kept_images) / tried if tried else 1.0
        want = missing if select == "none" else math.ceil(1.2 * missing / max(rate, 0.05))
        k = max(1, min(want, max_batch, budget - tried))
        batch = generate(k, round_seed(seed, round_index, entropy))
        images, built = batch if isinstance(batch, tuple) else (batch, None)
        images = np.asarray(images)
        round_index += 1
        tried += len(images)
        if len(images) == 0:
            break
        detections = label(images)
        scores = selector.score(images, detections,
                                None if built is None else [b.boxes for b in built])
        served = detections if built is None else built
        features = novelty_features(images) if distinct and select != "none" else None
        for i, score in enumerate(scores):
            if len(kept_images) == n or not passes(score, select):
                continue
            if features is not None and kept_features:
                kept = np.stack(kept_features)[:, None]  # [k, 1, D]
                if distances(features[i : i + 1], kept).min() < selector.copy_threshold:
                    continue  # a repeat of an image already selected
            kept_images.append(images[i])
            kept_det.append(served[i])
            kept_scores.append(score)
            if features is not None:
                kept_features.append(features[i])
    done = len(kept_images) == n
    message = (f"{len(kept_images)} of {n} images passed select={select} after {tried} tries"
               + ("" if done else f"; the budget of {budget} tries ran out"))
    shape = images.shape[1:] if tried else (0, 0, 3)
    out = np.stack(kept_images) if kept_images else np.zeros((0, *shape), np.uint8)
    return SelectionResult(out, kept_det, kept_scores, tried,
                           len(kept_images) / tried if tried else 0.0, done, message)
