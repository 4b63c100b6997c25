"""Request and response models of the HTTP API; their fields and bounds are the OpenAPI docs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field

from service.core.cards import Recipe
from service.core.compose import MAX_DISTRACTORS, MAX_SIZE
from service.core.repository import SKU_PATTERN
from service.core.selector import SelectMode
from service.jobs import JobState
from service.settings import ServiceSettings

SETTINGS = ServiceSettings.from_env()

Format = Literal["json", "zip"]

SKU_FIELD = Field(
    description="SKU name: 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit.",
    pattern=SKU_PATTERN.pattern,
    examples=["tube-red-200ml"],
)


class GenerateRequest(BaseModel):
    """What `POST /generate` takes (JSON body)."""

    sku: str = SKU_FIELD
    n: int = Field(16, ge=1, le=SETTINGS.max_n,
                   description=f"Images to return (1 to {SETTINGS.max_n}, BOXGEN_MAX_N).")
    seed: int | None = Field(None, ge=0, le=2**63 - 1,
                             description="Same seed, same model version: same images.")
    version: int | None = Field(None, ge=1, description="Model version; default the newest.")
    select: SelectMode = Field(
        "green",
        description="green: only novel, good images; yellow: also novel, borderline ones; "
        "none: raw samples, unscored.",
    )
    size: int | None = Field(
        None, ge=16, le=MAX_SIZE,
        description=f"Long side of the images in pixels (compose SKUs: default 256, at most "
        f"{MAX_SIZE}; a gan SKU makes its own resolution only).")
    distractors: list[Annotated[str, Field(pattern=SKU_PATTERN.pattern)]] = Field(
        default_factory=list, max_length=MAX_DISTRACTORS,
        description="Other compose SKUs whose products may lie in the bin too (compose SKUs "
        "only), labelled with their own classes, numbered after the SKU's (see `classes`).",
        examples=[["can-blue-330ml"]])
    max_distractors: int = Field(
        2, ge=0, le=MAX_DISTRACTORS,
        description="Each image holds 0 to this many distractors (with `distractors`).")
    format: Format = Field(
        "json",
        description="json: base64 PNGs with boxes and scores; zip: a YOLO + COCO dataset "
        "(images/, labels/, annotations.json, data.yaml) ready for `yolo train`.",
    )


class Box(BaseModel):
    """One labelled object, YOLO style: centre and size normalised to the image."""

    class_id: int = Field(ge=0, description="Class index: the photos' (compose) or the "
                          "labeller's (gan).")
    class_name: str = Field(description="Class name.")
    confidence: float = Field(ge=0, le=1, description="1 for labels by construction (compose); "
                              "the labeller's confidence (gan).")
    cx: float = Field(description="Box centre x / image width.")
    cy: float = Field(description="Box centre y / image height.")
    w: float = Field(description="Box width / image width.")
    h: float = Field(description="Box height / image height.")


class GeneratedImage(BaseModel):
    png_base64: str = Field(description="The image, PNG, base64-encoded.")
    width: int
    height: int
    boxes: list[Box] = Field(description="The objects: visible-part boxes by construction "
                             "(compose), or what the labeller found (gan).")
    category: str | None = Field(
        None, description="Selection category: green, yellow, white or red (None when "
        "select=none).")
    novelty: float | None = Field(
        None, description="Distance to the nearest training image over the copy threshold "
        "(above 1: novel); None when select=none.")
    quality: float | None = Field(
        None, description="Labeller-based quality in [0, 1]; None when select=none.")
    fidelity: float | None = Field(
        None, description="Sharpness and cleanliness against the photos in [0, 1].")
    agreement: float | None = Field(
        None, description="Compose: F1 of the labeller's boxes against the labels.")
    reason: str | None = Field(None, description="Why the image got its category.")


class GenerateResponse(BaseModel):
    """What `POST /generate` answers with format=json."""

    sku: str
    version: int = Field(description="The model version that made these images.")
    select: SelectMode
    seed: int | None
    images: list[GeneratedImage]
    classes: list[str] = Field(description="Class names by class_id: the photos' (compose, "
                               "then the distractors') or the labeller's (gan).")
    tried: int = Field(description="Samples drawn to find these images.")
    passed_fraction: float = Field(ge=0, le=1,
                                   description="Fraction of drawn samples that passed selection.")
    complete: bool = Field(description="False when fewer than n images passed within the "
                           "sampling budget (n x BOXGEN_MAX_TRIES_FACTOR samples).")
    message: str | None = Field(None, description="Why the answer is incomplete.")


# `POST /finetune` is multipart (photos and label files), so its fields are the API method's
# parameters; their types live here with the other schemas. Multipart text fields arrive
# JSON-decoded, so a numeric SKU such as 12345 comes in as an int.
FinetuneSku = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v),
                        SKU_FIELD]
FinetuneIterations = Annotated[int | None, Field(
    ge=1, le=SETTINGS.max_iterations,
    description="Training steps: the refiner's (compose) or the generator's (gan); default "
    "the recipe's profile.")]
FinetuneRefine = Annotated[bool, Field(
    description="compose: train the per-SKU refiner (otherwise the plain composites serve).")]
FinetuneRecipe = Annotated[Recipe, Field(
    description="compose: new arrangements of the photos' own products, refined (default); "
    "gan: the thesis' WGAN-GP fine-tune.")]



class FinetuneAccepted(BaseModel):
    """What `POST /finetune` answers: the job to poll at GET /jobs/{job_id}."""

    job_id: str
    state: JobState


class JobProgress(BaseModel):
    iteration: int | None = Field(None, description="Generator iterations done.")
    iterations: int | None = Field(None, description="Generator iterations planned.")
    stage: str | None = Field(None, description="training, publishing or published.")
    metrics: dict[str, Any] = Field(default_factory=dict,
                                    description="Latest training figures (losses, novelty, ...).")


class JobStatus(BaseModel):
    """A fine-tune job, as GET /jobs/{job_id} returns it."""

    job_id: str
    sku: str
    state: JobState
    created_at: float = Field(description="Unix time the job was submitted.")
    started_at: float | None = None
    finished_at: float | None = None
    images: int = Field(description="Photos uploaded.")
    labels: int = Field(description="Label files uploaded.")
    iterations: int | None = Field(None, description="Requested iterations (None: default).")
    attempts: int = Field(description="Times the fine-tune was started (resumes count).")
    shutdowns: int = Field(0, description="Of those starts, the ones a server shutdown "
                           "(SIGTERM: a rolling update) stopped; not held against the job.")
    progress: JobProgress
    version: int | None = Field(None, description="Published model version, on success.")
    report: dict[str, Any] | None = Field(
        None, description="The new version's evaluation: the thesis' four categories on "
        "samples of the published snapshot, novelty and quality figures, thresholds.")
    error: str | None = Field(None, description="Why it failed or was cancelled.")


class ErrorBody(BaseModel):
    """Every 4xx (and 503) answer of the API (`service/errors.py`)."""

    error: str = Field(description="What is wrong, in words.")
    field: str | None = Field(description="The request field at fault, e.g. 'n' or "
                              "'images[0]'; null when the whole request is.")


class JobList(BaseModel):
    jobs: list[JobStatus]


class ModelVersionInfo(BaseModel):
    version: int
    created_at: str | None = None
    card: dict[str, Any] = Field(description="The version's card: config, data, metrics.")


class SkuModels(BaseModel):
    sku: str
    serving: int = Field(description="Version served when a request pins none (the newest).")
    versions: list[ModelVersionInfo]


class ModelsResponse(BaseModel):
    skus: list[SkuModels]
    labeller: ModelVersionInfo | None = Field(None, description="The serving labeller.")
    base: ModelVersionInfo | None = Field(None, description="The fine-tune base.")
