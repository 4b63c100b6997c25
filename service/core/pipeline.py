"""What `/generate` and `boxgen generate` do: resolve the model, sample, label and select.

`ModelCache` keeps ONNX sessions open per worker, keyed by (sku, version, the version folder's
inode): the version is resolved from the repository listing on every request (a directory
listing and a stat, cheap), so a version published by a fine-tune serves from the next request
on, without a restart, and a model removed and published again under the same number is not
mistaken for the one loaded before.

Selection (`select` green / yellow) needs the version's card to carry a `selection` entry
(the novelty reference and thresholds the fine-tune measured). Versions published before
selection existed have none: they raise `SelectionMissing` for green/yellow (409 over HTTP)
and serve `select=none`.

A version's card says how it makes images: `recipe: gan` samples its generator and the
labeller labels the samples; `recipe: compose` composes from its object bank (refined when it
has a refiner) with labels by construction, and the labeller only checks them. A compose
request may name other compose SKUs as `distractors`: their products join the arrangements,
labelled with their own classes (`service.core.compose.with_distractors`).

Torch-free and HTTP-free: the HTTP layer encodes `Generated` (`service/responses.py`) and keeps
its metrics from `ModelCache`'s counts.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.core.batching import Batcher
from service.core.cards import GeneratorCard
from service.core.compose import DEFAULT_SIZE, Distractors, with_distractors
from service.core.compose_session import ComposeSession
from service.core.cpu_pool import single_threaded_blas
from service.core.datasets import write_dataset
from service.core.devices import session_threads
from service.core.gan_session import GeneratorSession
from service.core.labeller_session import Detections, LabellerSession
from service.core.object_bank import BANK_DIR, ObjectBank
from service.core.repository import (
    GENERATOR_FILE,
    LABELLER,
    LABELLER_FILE,
    REFINER_FILE,
    SELECTION_FILE,
    ModelNotFound,
    ModelRepository,
    ModelUnreadable,
    ModelVersion,
)
from service.core.sampling import sample_selected
from service.core.seeds import image_seeds, stream
from service.core.selector import Selector


class LabellerMissing(LookupError):
    """The repository has no labeller, or its newest one does not load: the server's state is
    at fault, not the request."""


class SelectionMissing(LookupError):
    """The model version carries no selection data, so only `select=none` can serve it."""


class SizeUnsupported(ValueError):
    """A `size` the model cannot make: a gan version makes its own resolution only."""


class DistractorUnusable(ValueError):
    """A `distractors` entry that cannot lend products: the SKU itself, a gan model (no object
    bank), or for a gan request any; `missing` when no such SKU is published."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


Session = GeneratorSession | ComposeSession


@dataclass(frozen=True)
class Generated:
    """Images one request produced, with their labels and selection figures."""

    sku: str
    version: int
    select: str
    seed: int | None
    images: list[np.ndarray]  # uint8 [H, W, 3] each
    detections: list[Detections]
    # Class names: the photos' (compose; then the distractors') or the labeller's (gan).
    classes: list[str]
    scores: list[dict[str, Any] | None]  # category / novelty / quality per image
    tried: int  # samples drawn
    passed: int  # samples that passed selection (all of them with select=none)
    message: str | None = None  # why fewer than n images came back, when they did

    @property
    def passed_fraction(self) -> float:
        return self.passed / self.tried if self.tried else 0.0


class ModelCache:
    """ONNX sessions of one worker: the labeller, and the most recently used generators."""

    def __init__(self, repository: ModelRepository, max_generators: int = 16):
        self.repository = repository
        self.max_generators = max_generators
        self.generators: OrderedDict[tuple[str, int], Session] = OrderedDict()
        self.selectors: OrderedDict[tuple[str, int], Selector] = OrderedDict()
        self.labeller: LabellerSession | None = None
        self.labeller_key: tuple[int, tuple[int, int]] | None = None  # version, stamp
        self.lock = threading.Lock()

    def load_labeller(self) -> LabellerSession:
        """The newest published labeller (reloaded when a newer one appears); LabellerMissing
        without one, or when it cannot be loaded."""
        try:
            newest = self.repository.resolve(LABELLER)
        except ModelNotFound:
            raise LabellerMissing("no labeller in the model repository yet; publish one with "
                                  "`boxgen train-labeller`") from None
        key = (newest.version, newest.stamp)
        with self.lock:
            if self.labeller is None or self.labeller_key != key:
                try:
                    self.labeller = LabellerSession.from_repository(self.repository.root,
                                                                    newest.version)
                except Exception as e:  # onnxruntime raises several types for a bad file
                    self.labeller = None
                    raise LabellerMissing(str(newest.unreadable(LABELLER_FILE, e))) from e
                self.labeller_key = key
            return self.labeller

    def labeller_usable(self) -> bool:
        """Whether the newest labeller loads: a directory listing while it is the one loaded,
        so readiness can follow a labeller removed, or replaced by a bad copy, and back."""
        try:
            self.load_labeller()
        except LabellerMissing:
            return False
        return True

    def _cached(self, table: OrderedDict, entry: ModelVersion, load: Callable[[], Any]) -> Any:
        """`table`'s item for `entry`, loaded on a miss; the least recently used beyond
        `max_generators` is dropped. Loading happens outside the lock: it is slow."""
        key = (entry.name, entry.version, entry.stamp)
        with self.lock:
            if key in table:
                table.move_to_end(key)
                return table[key]
        value = load()
        with self.lock:
            table[key] = value
            while len(table) > self.max_generators:
                table.popitem(last=False)
        return value

    def generator(self, entry: ModelVersion) -> Session:
        """The version's session (by its card's recipe); ModelUnreadable when its files do
        not load."""

        def load() -> Session:
            # onnxruntime, PIL and json raise several types for a bad file: any is unreadable.
            if entry.read_card(GeneratorCard).recipe == "gan":
                try:
                    return GeneratorSession(entry.file(GENERATOR_FILE))
                except Exception as e:
                    raise entry.unreadable(GENERATOR_FILE, e) from e
            try:
                bank = ObjectBank.load(entry.path)
            except Exception as e:
                raise entry.unreadable(BANK_DIR, e) from e
            refiner = entry.file(REFINER_FILE)
            try:
                return ComposeSession(bank, refiner if refiner.is_file() else None)
            except Exception as e:
                raise entry.unreadable(REFINER_FILE, e) from e

        return self._cached(self.generators, entry, load)

    def selector(self, entry: ModelVersion) -> Selector:
        """The version's selection (novelty reference, thresholds); SelectionMissing if none.
        Kept for as many versions as generators: each holds its version's reference features."""

        def load() -> Selector:
            card = entry.read_card(GeneratorCard)
            if not card.selection:
                raise SelectionMissing(
                    f"model {entry.name} version {entry.version} has no selection data (it was "
                    "published without a labeller in the repository, or by `boxgen export`); "
                    "ask for select=none, or fine-tune it again")
            try:
                return Selector.load(entry.path, card.selection)
            except Exception as e:  # a cut-short npz raises zipfile.BadZipFile, not ValueError
                raise entry.unreadable(SELECTION_FILE, e) from e

        return self._cached(self.selectors, entry, load)

    def warm_up(self) -> dict[str, str]:
        """Load the labeller and each SKU's newest generator, and run each once.

        LabellerMissing without a usable labeller. A SKU whose newest version does not load
        is skipped, so one corrupt copy cannot keep every other SKU from serving; returns
        those SKUs with the reason (its requests answer the same reason)."""
        labeller = self.load_labeller()
        broken = {}
        for sku in self.repository.skus():
            try:
                session = self.generator(self.repository.resolve(sku))
            except ModelUnreadable as e:
                broken[sku] = str(e)
                continue
            sample = session.sample(1, seed=0)
            labeller.label(sample[0] if isinstance(sample, tuple) else sample)
        return broken


class Pipeline:
    """Sampling, labelling and selection for one worker.

    Network calls go through one `Batcher`: one call at a time (onnxruntime already spreads a
    call over every core, so concurrent calls in one process would only contend), and
    concurrent requests for the same model share their calls, while uploads and job queries
    go on. Each model and `select` keeps the pass rate its requests saw, so the next request's
    first round asks for about as many images as it needs.

    Compose requests run at most `compose_slots` at a time (default: the worker's share of
    the CPUs + 1); the rest wait their turn in order. Their time goes to composing and judging, CPU
    work in the request's own thread: sixteen at once only contend for the cores and the GIL
    (measured on 2 CPUs, 16 clients asking n=1 over HTTP: 88-93 img/s with 2 or 3 slots,
    76 with none, p99 latency 0.31 s against 0.41). A gan request's time goes to the network
    calls it shares with others, so it takes no slot: the more in flight, the larger the
    shared batch.
    """

    def __init__(self, cache: ModelCache, max_tries_factor: int = 20,
                 batcher: Batcher | None = None, compose_slots: int | None = None):
        self.cache = cache
        self.max_tries_factor = max_tries_factor
        self.batcher = batcher or Batcher()
        self.pass_rates: dict[tuple[Any, ...], float] = {}
        if compose_slots is not None and compose_slots < 1:
            raise ValueError(f"compose_slots must be at least 1, got {compose_slots}")
        self.compose_slots = threading.BoundedSemaphore(compose_slots or session_threads() + 1)
        single_threaded_blas()

    def generate(self, sku: str, n: int, seed: int | None = None, version: int | None = None,
                 select: str = "green", size: int | None = None,
                 distractors: Sequence[str] = (), max_distractors: int = 2) -> Generated:
        """`n` labelled images of `sku` (newest version unless pinned) that pass `select`.

        `size`: the long side of compose images (default `DEFAULT_SIZE`); a gan version makes
        its own resolution only (SizeUnsupported for another). `distractors`: other compose
        SKUs (newest versions) whose products each image may hold, up to `max_distractors`."""
        entry = self.cache.repository.resolve(sku, version)
        session = self.cache.generator(entry)
        if isinstance(session, GeneratorSession):
            if size is not None and size != session.resolution:
                raise SizeUnsupported(
                    f"size {size}: {sku} version {entry.version} is a gan model, which makes "
                    f"{session.resolution} px images only")
            if distractors:
                raise DistractorUnusable(f"{sku} version {entry.version} is a gan model: it "
                                         "samples whole images and cannot place distractors")
            side = session.resolution

            def sample(seeds: list[int]) -> np.ndarray:
                return self.batcher.run(("sample", id(session)), seeds, session.sample_seeded)
            classes = None  # the labeller's
        else:
            side = DEFAULT_SIZE if size is None else size
            pool, classes = self.distractors(sku, session, distractors, max_distractors)

            def sample(seeds: list[int]) -> tuple[np.ndarray, list[Detections]]:
                # Composing is numpy and OpenCV, not a network call: it runs in this request's
                # thread, beside the other compose slots' and the batched network calls.
                images, masks, labels = session.compose(seeds, side, pool)
                if session.refiner is not None and len(images):
                    images = self.batcher.run(("sample", id(session), side),
                                              list(zip(images, masks, strict=True)),
                                              lambda pairs: refine(session, pairs))
                return images, labels

        # Requests that share a pass rate: the same version, select, size and distractors.
        rate_key = (entry.name, entry.version, entry.stamp, select, side, tuple(distractors),
                    max_distractors if distractors else None)
        with self.compose_slots if isinstance(session, ComposeSession) else nullcontext():
            return self._selected(entry, session, sample, classes, n, seed, select, rate_key)

    def _selected(self, entry: ModelVersion, session: Session,
                  sample: Callable[[list[int]], Any], classes: list[str] | None, n: int,
                  seed: int | None, select: str, rate_key: tuple[Any, ...]) -> Generated:
        """`generate` once the model is resolved: `sample(seeds)` makes images (compose: and
        their labels, named by `classes`)."""
        sku = entry.name
        stream_seeds = image_seeds(stream(seed), 0, n)
        if select == "none" and isinstance(session, ComposeSession):
            images, labels = sample(stream_seeds)  # labels by construction: no labeller needed
            return Generated(sku, entry.version, "none", seed, list(images), labels,
                             classes, [None] * n, n, n)
        labeller = self.cache.load_labeller()

        def label(images: list[np.ndarray] | np.ndarray) -> list[Detections]:
            return list(self.batcher.run(("label", id(labeller)), list(images), labeller.label))

        classes = classes or labeller.classes
        if select == "none":
            images = sample(stream_seeds)
            return Generated(sku, entry.version, "none", seed, list(images), label(images),
                             classes, [None] * len(images), len(images), len(images))

        result = sample_selected(sample, label, self.cache.selector(entry), n, seed, select,
                                 max_tries=n * self.max_tries_factor,
                                 expected_rate=self.pass_rates.get(rate_key, 1.0))
        if result.tried:
            previous = self.pass_rates.get(rate_key, result.pass_rate)
            self.pass_rates[rate_key] = 0.7 * previous + 0.3 * result.pass_rate
        return Generated(
            sku, entry.version, select, seed, list(result.images), list(result.detections),
            classes, [score_fields(s) for s in result.scores], result.tried,
            len(result.images), None if result.complete else result.message,
        )

    def distractors(self, sku: str, session: ComposeSession, names: Sequence[str], most: int
                    ) -> tuple[Distractors | None, list[str]]:
        """The distractor banks of `names` (newest versions) and the labels' class names;
        DistractorUnusable for the SKU itself, one not published, or a gan model."""
        others = {}
        for name in dict.fromkeys(names):  # each once, in the order given
            if name == sku:
                raise DistractorUnusable(f"{name} is the SKU asked for; distractors are other "
                                         "SKUs' products")
            try:
                other = self.cache.generator(self.cache.repository.resolve(name))
            except ModelNotFound:
                raise DistractorUnusable(f"no SKU {name} in the model repository",
                                         missing=True) from None
            if not isinstance(other, ComposeSession):
                raise DistractorUnusable(f"{name} is a gan model: it has no object bank to "
                                         "lend products from (fine-tune it with recipe "
                                         "compose)")
            others[name] = other.bank
        if not others:
            return None, session.classes
        return with_distractors(session.bank, others, most)


def refine(session: ComposeSession, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """`session`'s refiner on (composite, mask) pairs of one size."""
    return session.refiner.refine(np.stack([c for c, _ in pairs]), np.stack([m for _, m in pairs]))


def score_fields(score: Any) -> dict[str, Any]:
    """Category, novelty and quality from a selection score (dataclass or dict)."""
    get = score.get if isinstance(score, dict) else lambda k: getattr(score, k, None)
    return {key: get(key)
            for key in ("category", "novelty", "quality", "fidelity", "agreement", "reason")}


def write_generated(out: Path, result: Generated) -> Path:
    """A dataset folder: images/, labels/, confidences/, annotations.json, data.yaml and
    generation.json (model version, seed, selection figures per image)."""
    stems = [f"{result.sku}-v{result.version}-{i:04d}" for i in range(len(result.images))]
    write_dataset(out, result.images, result.detections, result.classes, stems)
    summary = {
        "sku": result.sku, "version": result.version, "seed": result.seed,
        "select": result.select, "tried": result.tried,
        "passed_fraction": result.passed_fraction, "message": result.message,
        "images": [{"file": f"images/{s}.png", **(score or {})}
                   for s, score in zip(stems, result.scores, strict=True)],
    }
    (out / "generation.json").write_text(json.dumps(summary, indent=2))
    return out


def generate_dataset(sku: str, n: int, out: Path, models: Path, seed: int | None = None,
                     version: int | None = None, select: str = "green",
                     size: int | None = None, distractors: Sequence[str] = (),
                     max_distractors: int = 2) -> Generated:
    """Write `n` labelled images of `sku` that pass `select` to `out` as a YOLO + COCO dataset:
    exactly what `POST /generate` with `format=zip` returns, as a folder (`boxgen generate`)."""
    pipeline = Pipeline(ModelCache(ModelRepository(models)))
    result = pipeline.generate(sku, n, seed, version, select, size, distractors,
                               max_distractors)
    write_generated(Path(out), result)
    return result
