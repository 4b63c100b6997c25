"""The HTTP answers: `/generate`'s JSON or zip, and the views of `GET /models` and the jobs."""

from __future__ import annotations

import base64
import dataclasses
import io
import tempfile
import time
import zipfile
from pathlib import Path

from starlette.responses import Response

from service import metrics
from service.core import png
from service.core.labeller_session import Detections
from service.core.pipeline import Generated, Pipeline, write_generated
from service.core.repository import (
    BASE,
    LABELLER,
    ModelNotFound,
    ModelRepository,
    ModelUnreadable,
    ModelVersion,
)
from service.jobs import Job
from service.schemas import (
    Box,
    GeneratedImage,
    GenerateRequest,
    GenerateResponse,
    JobProgress,
    JobStatus,
    ModelsResponse,
    ModelVersionInfo,
    SkuModels,
)


def version_info(entry: ModelVersion) -> ModelVersionInfo:
    """A version and its card; an unreadable card is listed with the reason, not a 500."""
    try:
        card = entry.card
    except ModelUnreadable as e:
        return ModelVersionInfo(version=entry.version, created_at=None, card={"error": str(e)})
    return ModelVersionInfo(version=entry.version, created_at=card.get("created_at"), card=card)


def newest_info(repository: ModelRepository, name: str) -> ModelVersionInfo | None:
    try:
        return version_info(repository.resolve(name))
    except ModelNotFound:
        return None


def models_overview(repository: ModelRepository) -> ModelsResponse:
    """Every SKU with all its versions and cards, which one serves, the labeller and base."""
    skus = []
    for sku in repository.skus():
        versions = repository.versions(sku)
        skus.append(SkuModels(
            sku=sku, serving=versions[-1],
            versions=[version_info(repository.resolve(sku, v)) for v in versions],
        ))
    return ModelsResponse(skus=skus, labeller=newest_info(repository, LABELLER),
                          base=newest_info(repository, BASE))


def job_status(job: Job) -> JobStatus:
    fields = dataclasses.asdict(job)
    progress = fields.pop("progress") or {}
    return JobStatus(
        job_id=fields.pop("id"),
        progress=JobProgress(
            iteration=progress.get("iteration"), iterations=progress.get("iterations"),
            stage=progress.get("stage"), metrics=progress.get("metrics") or {},
        ),
        **{k: v for k, v in fields.items() if k in JobStatus.model_fields},
    )


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
            png_base64=base64.b64encode(encoded).decode(),
            width=image.shape[1], height=image.shape[0], boxes=boxes(det, result.classes),
            **(score or {}),
        )
        for image, encoded, det, score in zip(result.images, png.encode_all(result.images),
                                              result.detections, result.scores, strict=True)
    ]
    return GenerateResponse(sku=result.sku, version=result.version, select=result.select,
                            seed=result.seed, images=images, classes=result.classes,
                            tried=result.tried,
                            passed_fraction=result.passed_fraction,
                            complete=result.message is None, message=result.message)


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
                               request.select, request.size, request.distractors,
                               request.max_distractors)
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
    metrics.record_models_loaded(pipeline.cache)
    return body
