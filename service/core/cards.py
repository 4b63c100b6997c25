"""The typed cards of the model repository and the fine-tune status file.

Each published version carries a `card.json` (`repository.CARD`); training writes it through
these models and every reader (the pipeline, the labeller session, the job runner, the CLI)
reads it through them, so a field is spelled once. Cards allow extra keys: a card records what
its run knew (losses, figures), and versions published by older code still load.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

# How a SKU's images are made, the generator card's `recipe`: `compose` pastes the photos'
# own products into new arrangements (and refines them); `gan` samples a fine-tuned WGAN-GP.
Recipe = Literal["compose", "gan"]
DEFAULT_RECIPE: Recipe = "compose"  # for new SKUs; a card without a recipe is an older gan
# Whether compose trains its refiner unless told: on only while it wins downstream. It did
# not (bench/results/downstream.md: +compose vs +compose-raw within noise on every group).
DEFAULT_REFINE = False
GENERATOR_RECIPES: tuple[str, ...] = get_args(Recipe)
STATUS_FILE = "status.json"  # a fine-tune job's FinetuneStatus, beside its run folder


class Card(BaseModel):
    """What every card holds; `publish` fills in name, version, created_at and files."""

    model_config = ConfigDict(extra="allow")

    kind: str
    name: str | None = None
    version: int | None = None
    created_at: str | None = None
    files: list[str] = Field(default_factory=list)


class GeneratorCard(Card):
    """A SKU's generator (`repository.GENERATOR_FILE`)."""

    kind: Literal["generator"] = "generator"
    recipe: Recipe = "gan"
    config: dict[str, Any] = Field(default_factory=dict)  # the TrainConfig it was trained with
    iterations: int | None = None
    generator_args: dict[str, Any] = Field(default_factory=dict)
    onnx_parity_max_abs: float | None = None
    git_commit: str | None = None
    sku: str | None = None
    parent: str | None = None  # the base it started from, "_base/<version>"
    data_fingerprint: str | None = None
    images: int | None = None  # photos it was fine-tuned on
    labels: dict[str, int] | None = None  # label files checked against them
    label_source: str | None = None  # compose: where its boxes came from, labels or labeller
    run: str | None = None  # the training run folder
    selection: dict[str, Any] | None = None  # novelty reference and thresholds (Selector)
    snapshots: list[dict[str, Any]] | None = None  # each judged snapshot's score
    evaluation: dict[str, Any] | None = None  # the published snapshot's report
    bank: dict[str, Any] | None = None  # compose: the object bank's statistics
    refiner: dict[str, Any] | None = None  # compose: the refiner's config, steps and parity


class BaseCard(Card):
    """The pretrained checkpoint fine-tunes start from (`repository.BASE_FILE`)."""

    kind: Literal["base"] = "base"
    config: dict[str, Any] = Field(default_factory=dict)
    iterations: int | None = None
    refiner: dict[str, Any] | None = None  # the pretrained refiner (`BASE_REFINER_FILE`)


class LabellerCard(Card):
    """The YOLO labeller (`repository.LABELLER_FILE`)."""

    kind: Literal["labeller"] = "labeller"
    classes: list[str]
    imgsz: int
    model_cfg: str | None = None
    epochs: int | None = None
    batch: int | None = None
    seed: int | None = None
    recipe: str | None = None  # the labeller training recipe (training.labeller.RECIPES)
    train_args: dict[str, Any] = Field(default_factory=dict)
    data: str | None = None
    data_fingerprint: str | None = None
    heldout_data: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    onnx_opset: int | None = None
    format: str | None = None


class FinetuneStatus(BaseModel):
    """`status.json`: a fine-tune's progress, written by training, read by the job runner."""

    model_config = ConfigDict(extra="allow")

    stage: str | None = None  # training, publishing, published
    iteration: int | None = None
    iterations: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)  # latest losses
    evaluation: dict[str, Any] | None = None  # latest judged snapshot: step and categories
    version: int | None = None  # published version, once published
    card: dict[str, Any] | None = None  # its card
    report: dict[str, Any] | None = None  # its evaluation report
