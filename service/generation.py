"""What `/generate` does: resolve the model, sample, label, select, and encode the answer.

`ModelCache` keeps ONNX sessions open per worker, keyed by (sku, version): the version is
resolved from the repository listing on every request (a directory listing, cheap), so a
version published by a fine-tune serves from the next request on, without a restart.

Selection (`select` green / yellow) needs the version's card to carry a `selection` entry
(the novelty reference and thresholds the fine-tune measured). Versions published before
selection existed have none: they answer 409 for green/yellow and serve `select=none`.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from starlette.responses import Response

from service import metrics
from service.datasets import write_dataset
from service.errors import Conflict, RequestError
from service.generator import GeneratorSession
from service.labeller import Detections, LabellerSession
from service.repository import LABELLER, ModelNotFound, ModelRepository, ModelVersion
from service.schemas import Box, GeneratedImage, GenerateRequest, GenerateResponse
from service.selection import Selector, sample_selected


@dataclass(frozen=True)
class Generated:
    """Images one request produced, with their labels and selection figures."""

    sku: str
    version: int
    select: str
    seed: int | None
    images: list[np.ndarray]  # uint8 [H, W, 3] each
    detections: list[Detections]
    classes: list[str]  # the class names of the labeller that labelled them
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
        self.generators: OrderedDict[tuple[str, int], GeneratorSession] = OrderedDict()
        self.selectors: OrderedDict[tuple[str, int], Selector] = OrderedDict()
        self.labeller: LabellerSession | None = None
        self.labeller_version: int | None = None
        self.lock = threading.Lock()

    def load_labeller(self) -> LabellerSession:
        """The newest published labeller (reloaded when a newer one appears); 503 without one."""
        try:
            newest = self.repository.resolve(LABELLER)
        except ModelNotFound:
            # The server's state, not the request, is at fault: not a 404 on the SKU.
            raise RequestError("no labeller in the model repository yet; publish one with "
                               "`boxgen train-labeller`", None, status=503) from None
        with self.lock:
            if self.labeller is None or self.labeller_version != newest.version:
                self.labeller = LabellerSession.from_repository(self.repository.root,
                                                                newest.version)
                self.labeller_version = newest.version
                metrics.MODELS_LOADED.labels(kind="labeller").set(1)
            return self.labeller

    def _cached(self, table: OrderedDict, entry: ModelVersion, load: Callable[[], Any]) -> Any:
        """`table`'s item for `entry`, loaded on a miss; the least recently used beyond
        `max_generators` is dropped. Loading happens outside the lock: it is slow."""
        key = (entry.name, entry.version)
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

    def generator(self, entry: ModelVersion) -> GeneratorSession:
        session = self._cached(self.generators, entry,
                               lambda: GeneratorSession(entry.file("generator.onnx")))
        metrics.MODELS_LOADED.labels(kind="generator").set(len(self.generators))
        return session

    def selector(self, entry: ModelVersion) -> Selector:
        """The version's selection (novelty reference, thresholds), or 409 when it has none.
        Kept for as many versions as generators: each holds its version's reference features."""

        def load() -> Selector:
            card = entry.card
            if not card.get("selection"):
                raise Conflict(
                    f"model {entry.name} version {entry.version} has no selection data (it was "
                    "published without a labeller in the repository, or by `boxgen export`); "
                    "ask for select=none, or fine-tune it again", "select",
                )
            return Selector.load(entry.path, card["selection"])

        return self._cached(self.selectors, entry, load)

    def warm_up(self) -> None:
        """Load the labeller and each SKU's newest generator, and run each once."""
        labeller = self.load_labeller()
        for sku in self.repository.skus():
            session = self.generator(self.repository.resolve(sku))
            labeller.label(session.sample(1, seed=0))


class Pipeline:
    """Sampling, labelling and selection for one worker; inference runs one call at a time.

    onnxruntime already spreads one call over every core, so concurrent calls in one process
    would only contend; the lock serialises inference while uploads and job queries go on.
    """

    def __init__(self, cache: ModelCache, max_tries_factor: int = 20):
        self.cache = cache
        self.max_tries_factor = max_tries_factor
        self.inference = threading.Lock()

    def generate(self, sku: str, n: int, seed: int | None = None, version: int | None = None,
                 select: str = "green") -> Generated:
        """`n` labelled images of `sku` (newest version unless pinned) that pass `select`."""
        entry = self.cache.repository.resolve(sku, version)
        session = self.cache.generator(entry)
        labeller = self.cache.load_labeller()

        def sample(n: int, seed: int | None) -> np.ndarray:
            with self.inference:
                return session.sample(n, seed)

        def label(images: list[np.ndarray] | np.ndarray) -> list[Detections]:
            with self.inference:
                return labeller.label(images)

        if select == "none":
            images = sample(n, seed)
            return Generated(sku, entry.version, "none", seed, list(images), label(images),
                             labeller.classes, [None] * len(images), len(images), len(images))

        result = sample_selected(sample, label, self.cache.selector(entry), n, seed, select,
                                 max_tries=n * self.max_tries_factor)
        return Generated(
            sku, entry.version, select, seed, list(result.images), list(result.detections),
            labeller.classes, [score_fields(s) for s in result.scores], result.tried,
            len(result.images), None if result.complete else result.message,
        )


def score_fields(score: Any) -> dict[str, Any]:
    """Category, novelty and quality from a selection score (dataclass or dict)."""
    get = score.get if isinstance(score, dict) else lambda k: getattr(score, k, None)
    return {key: get(key) for key in ("category", "novelty", "quality", "reason")}


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def boxes(detections: Detections, classes: list[str]) -> list[Box]:
    rows = detections.yolo_rows()
    return [
        Box(class_id=int(cls), class_name=classes[int(cls)] if int(cls) < len(classes) else "",
            confidence=float(conf), cx=float(r[1]), cy=float(r[2]), w=float(r[3]), h=float(r[4]))
        for r, cls, conf in zip(rows, detections.cls, detections.conf, strict=True)
    ]


def to_json(result: Generated) -> GenerateResponse:
    images = [
        GeneratedImage(
            png_base64=base64.b64encode(png_bytes(image)).decode(),
            width=image.shape[1], height=image.shape[0], boxes=boxes(det, result.classes),
            **(score or {}),
        )
        for image, det, score in zip(result.images, result.detections, result.scores,
                                     strict=True)
    ]
    return GenerateResponse(sku=result.sku, version=result.version, select=result.select,
                            seed=result.seed, images=images, tried=result.tried,
                            passed_fraction=result.passed_fraction,
                            complete=result.message is None, message=result.message)


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


def to_zip(result: Generated) -> bytes:
    """`write_generated`'s folder as a zip archive."""
    with tempfile.TemporaryDirectory(prefix="boxgen-zip-") as tmp:
        out = write_generated(Path(tmp), result)
        buffer = io.BytesIO()
        # PNGs are already compressed; deflating them again costs time for nothing.
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for path in sorted(out.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(out).as_posix())
        return buffer.getvalue()


def answer(pipeline: Pipeline, request: GenerateRequest) -> GenerateResponse | Response:
    """Generate, encode as JSON or a zip archive, and record the request's metrics."""
    start = time.perf_counter()
    result = pipeline.generate(request.sku, request.n, request.seed, request.version,
                               request.select)
    version_header = {"X-Boxgen-Model-Version": str(result.version)}
    if request.format == "zip":
        body: GenerateResponse | Response = Response(
            to_zip(result), media_type="application/zip",
            headers={**version_header, "Content-Disposition":
                     f'attachment; filename="{result.sku}-v{result.version}.zip"'},
        )
    else:
        body = to_json(result)
    metrics.record_generation(request.sku, time.perf_counter() - start, len(result.images),
                              result.tried, result.passed)
    return body
