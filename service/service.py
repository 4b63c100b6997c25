"""The boxgen HTTP API: one BentoML service, each endpoint a short method delegating to a module.

    POST   /generate         images of a SKU with YOLO labels (JSON or a zip dataset)
    POST   /finetune         start fine-tuning a SKU on uploaded photos -> {"job_id"}
    GET    /jobs             every fine-tune job
    GET    /jobs/{job_id}    one job: state, progress, published version and report
    DELETE /jobs/{job_id}    cancel a job
    GET    /models           every SKU, its versions and cards, which one serves
    GET    /livez /readyz /metrics   health and Prometheus (never behind the API key)

BentoML API methods take POST only, so the GET/DELETE routes with path parameters are a
FastAPI app mounted on the service (`bentoml.asgi_app`); its methods are class views of the
same service instance. Run with `boxgen serve --models DIR` (see `service/serve.py`).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from service import metrics
from service.admission import AdmissionMiddleware
from service.core.batching import Batcher
from service.core.cards import DEFAULT_RECIPE, DEFAULT_REFINE
from service.core.pipeline import LabellerMissing, ModelCache, Pipeline
from service.core.repository import BASE, ModelNotFound, ModelRepository
from service.errors import RequestError, answers_errors, error_body, error_response
from service.jobs import JobNotFound, JobRunner, JobStore
from service.openapi import BentoErrorsMiddleware, OpenApiMiddleware, error_responses
from service.responses import answer, job_status, models_overview
from service.schemas import (
    FinetuneAccepted,
    FinetuneIterations,
    FinetuneRecipe,
    FinetuneRefine,
    FinetuneSku,
    GenerateRequest,
    GenerateResponse,
    JobList,
    JobStatus,
    ModelsResponse,
)
from service.security import (
    UPLOAD_NAMES_KEY,
    ApiKeyMiddleware,
    UploadGuardMiddleware,
    checked_empty,
    checked_sku,
    checked_uploads,
)
from service.serve import watch_server
from service.settings import REQUEST_THREADS, ServiceSettings

logger = logging.getLogger("boxgen.service")

WARM_UP_RETRY_SECONDS = 5.0

jobs_api = FastAPI(title="boxgen jobs and models", docs_url="/jobs-docs",
                   openapi_url="/jobs-openapi.json", redoc_url=None,
                   responses=error_responses(401))


@jobs_api.exception_handler(JobNotFound)
async def job_not_found(_: Request, exc: JobNotFound) -> JSONResponse:
    return JSONResponse(error_body(str(exc), "job_id"), status_code=404)


@jobs_api.exception_handler(RequestError)
async def request_error(_: Request, exc: RequestError) -> JSONResponse:
    return error_response(exc)


def tag_sku(ctx: bentoml.Context, sku: str) -> None:
    """Let the request metrics count this request under its SKU."""
    ctx.request.state.__setattr__(metrics.SKU_STATE_KEY, str(sku))


@bentoml.asgi_app(jobs_api, path="/")
@bentoml.service(name="boxgen", threads=REQUEST_THREADS, traffic={"timeout": 600})
class Boxgen:
    """Generates labelled bin images per SKU and fine-tunes new SKUs from a few photos."""

    def __init__(self) -> None:
        self.settings = ServiceSettings.from_env()
        self.repository = ModelRepository(self.settings.models)
        self.cache = ModelCache(self.repository, self.settings.generator_cache)
        self.pipeline = Pipeline(self.cache, self.settings.max_tries_factor,
                                 Batcher(observe=metrics.record_batch),
                                 self.settings.compose_slots or None)
        self.jobs = JobStore(self.settings.models)
        self.runner = JobRunner(self.jobs, self.settings.finetune_args)
        watch_server(self.runner.abandon)  # this worker dies with `boxgen serve`
        self.runner.start()
        self.ready = False
        self.last_warm_up = 0.0
        self.warm_up_lock = threading.Lock()
        self.warm_up()

    def warm_up(self) -> bool:
        """Load and run the labeller and every SKU's newest generator once; False if missing."""
        with self.warm_up_lock:
            self.last_warm_up = time.monotonic()
            try:
                broken = self.cache.warm_up()
            except (ModelNotFound, FileNotFoundError, LabellerMissing) as exc:
                logger.warning("not ready: %s", exc)
                return False
            for sku, reason in broken.items():
                logger.error("SKU %s does not serve: %s", sku, reason)
            metrics.record_models_loaded(self.cache)
            metrics.update_gpu_memory()
            self.ready = True
            return True

    def __is_ready__(self) -> bool:
        """Ready once the repository and labeller are loaded and warmed up (retried while not),
        and while the newest labeller still loads (it can be removed or replaced by a bad copy)."""
        if self.ready and not self.cache.labeller_usable():
            self.ready = False
        if not self.ready and time.monotonic() - self.last_warm_up > WARM_UP_RETRY_SECONDS:
            self.warm_up()
        return self.ready

    @bentoml.api(route="/generate")
    @answers_errors
    def generate(self, request: GenerateRequest, /, ctx: bentoml.Context) -> GenerateResponse:
        """Images of `sku` labelled by the labeller; format=zip answers a dataset archive.

        Returns a GenerateResponse, or for format=zip a starlette Response (application/zip)
        that BentoML passes through. The annotation names the JSON form only: BentoML builds
        the OpenAPI response schema from it, and a union would leave the docs without one.
        """
        tag_sku(ctx, request.sku)
        checked_sku(request.sku)
        return answer(self.pipeline, request)

    @bentoml.api(route="/finetune")
    @answers_errors
    def finetune(self, ctx: bentoml.Context, sku: FinetuneSku, images: list[Path],
                 labels: list[Path] = Field(default_factory=list),  # noqa: B008
                 iterations: FinetuneIterations = None,
                 recipe: FinetuneRecipe = DEFAULT_RECIPE,
                 refine: FinetuneRefine = DEFAULT_REFINE,
                 # A list like `labels`: BentoML takes an optional file only as one.
                 empty: list[Path] = Field(default_factory=list),  # noqa: B008
                 ) -> FinetuneAccepted:
        """Fine-tune `sku` on uploaded photos (YOLO label files optional, matched by name;
        compose also takes an optional photo of the empty bin as `empty`).

        Answers at once; poll GET /jobs/{job_id}. The new version serves when it succeeds.
        """
        tag_sku(ctx, sku)
        checked_sku(sku)
        names = getattr(ctx.request.state, UPLOAD_NAMES_KEY, {})
        uploads, label_files = checked_uploads(images, labels, names, self.settings)
        empty_file = checked_empty(empty[0], names, self.settings) if empty else None
        if not self.repository.versions(BASE):
            raise RequestError("no pretrained base in the model repository; publish one with "
                               "`boxgen pretrain --models DIR`", "sku", status=409)
        job = self.jobs.create(sku, uploads, label_files, iterations or
                               self.settings.default_iterations, recipe, empty_file, refine)
        return FinetuneAccepted(job_id=job.id, state=job.state)

    @jobs_api.get("/jobs", response_model=JobList)
    def list_jobs(self) -> JobList:
        """Every fine-tune job, oldest first (kept across restarts)."""
        return JobList(jobs=[job_status(job) for job in self.jobs.list()])

    @jobs_api.get("/jobs/{job_id}", response_model=JobStatus, responses=error_responses(404))
    def job(self, job_id: str) -> JobStatus:
        """A job's state, progress, and on success its published version and report."""
        return job_status(self.jobs.get(job_id))

    @jobs_api.delete("/jobs/{job_id}", response_model=JobStatus,
                     responses=error_responses(404))
    def cancel_job(self, job_id: str) -> JobStatus:
        """Cancel a queued or running job; a finished job is returned unchanged."""
        return job_status(self.jobs.cancel(job_id))

    @jobs_api.get("/models", response_model=ModelsResponse)
    def models(self) -> ModelsResponse:
        """Every SKU with its versions and cards, which one serves, the labeller and the base."""
        return models_overview(self.repository)

    @bentoml.on_shutdown
    def stop_jobs(self) -> None:
        self.runner.stop()


# Outermost first: count every request (also those refused), then check the key, then refuse
# /generate past the work in flight, then check uploads; BentoML's own error answers and its
# OpenAPI document are put in our terms last.
Boxgen.add_asgi_middleware(metrics.RequestMetricsMiddleware)
Boxgen.add_asgi_middleware(ApiKeyMiddleware)
Boxgen.add_asgi_middleware(AdmissionMiddleware)
Boxgen.add_asgi_middleware(UploadGuardMiddleware)
Boxgen.add_asgi_middleware(BentoErrorsMiddleware)
Boxgen.add_asgi_middleware(OpenApiMiddleware)
