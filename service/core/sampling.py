"""Sampling until enough generated images pass selection, in seeded rounds."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.novelty import distances, novelty_features
from service.core.seeds import image_seeds, stream
from service.core.selector import ImageScore, Selector, passes


@dataclass
class SelectionResult:
    """What `sample_selected` returns: up to n passing images and how many it generated."""

    images: np.ndarray  # [k, H, W, 3] uint8, k <= n
    detections: list[Any]
    scores: list[ImageScore]
    tried: int  # images generated in all
    passed_fraction: float  # kept / tried
    complete: bool  # k == n
    message: str
    pass_rate: float  # images that passed the judge / tried (kept or not): the next prior


# The pass rate a request assumes before its own first round, counted as this many images.
PRIOR_WEIGHT = 4


def sample_selected(
    generate: Callable[[list[int]], np.ndarray | tuple[np.ndarray, list[Any]]],
    label: Callable[[np.ndarray], list[Any]],
    selector: Selector,
    n: int,
    seed: int | None = None,
    select: str = "green",
    max_tries: int | None = None,
    max_batch: int = 256,
    distinct: bool = True,
    expected_rate: float = 1.0,
) -> SelectionResult:
    """Generate, label and score in rounds until `n` images pass `select`, or the budget ends.

    `generate(seeds)` returns one uint8 NHWC image per seed, or (images, labels) for images
    built with labels (compose: one `Detections` each, which are then served, and checked
    against the labeller's; a `foreign` field marks distractors); `label(images)` returns one
    detections object per image. Image j of a request has seed j of the request's stream
    (`service.core.seeds`) and images are judged in stream order, so the same seed gives the
    same images however the rounds fall.
    Each round asks for what is missing divided by the pass rate (the images that passed
    so far, with `expected_rate` counted as `PRIOR_WEIGHT` images before the first), at most
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
    key = stream(seed)
    kept_images: list[np.ndarray] = []
    kept_det: list[Any] = []
    kept_scores: list[ImageScore] = []
    kept_features: list[np.ndarray] = []
    tried = passing = 0
    while len(kept_images) < n and tried < budget:
        missing = n - len(kept_images)
        rate = (passing + PRIOR_WEIGHT * expected_rate) / (tried + PRIOR_WEIGHT)
        want = missing if select == "none" else math.floor(missing / max(rate, 0.05))
        k = max(1, min(want, max_batch, budget - tried))
        batch = generate(image_seeds(key, tried, k))
        images, built = batch if isinstance(batch, tuple) else (batch, None)
        images = np.asarray(images)
        tried += len(images)
        if len(images) == 0:
            break
        detections = label(images)
        features = novelty_features(images)
        scores = selector.score(
            images, detections, None if built is None else [b.boxes for b in built], features,
            None if built is None else [getattr(b, "foreign", np.zeros(len(b), bool))
                                        for b in built])
        served = detections if built is None else built
        if not distinct or select == "none":
            features = None
        for i, score in enumerate(scores):
            if not passes(score, select):
                continue
            passing += 1
            if len(kept_images) == n:
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
                           len(kept_images) / tried if tried else 0.0, done, message,
                           passing / tried if tried else 0.0)
