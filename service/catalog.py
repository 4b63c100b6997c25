"""Read-only views for `GET /models` and the job endpoints, built from the repository and store."""

from __future__ import annotations

import dataclasses

from service.jobs import Job
from service.repository import BASE, LABELLER, ModelNotFound, ModelRepository, ModelVersion
from service.schemas import JobProgress, JobStatus, ModelsResponse, ModelVersionInfo, SkuModels


def version_info(entry: ModelVersion) -> ModelVersionInfo:
    card = entry.card
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
