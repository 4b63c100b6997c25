"""Train, export and publish the YOLO labeller.

The labeller is an Ultralytics YOLO built from a model yaml (`yolov5x.yaml` in production,
`yolov5n.yaml` for tests and the CPU demo): no pretrained weights exist offline, so it learns
from the labelled corpus alone. `train_labeller` splits the corpus into train/val by product
group (so validation shows new arrangements of held-back sets), trains, exports the best
weights to ONNX and publishes `labeller.onnx` + card under `_labeller`. A `LabellerRecipe`
holds the image size and Ultralytics settings that suit a kind of image: `SMALL_IMAGES` for
bins of <= 128 px such as the CPU demo's (the figures behind it are beside it), `STANDARD`
(Ultralytics' defaults) for photo-sized ones.
`training.labeller_evaluation` measures it (COCO mAP through the service's own pipeline).

Ultralytics is imported inside functions: importing it is slow, and it must be configured
for offline use first (`training.ultralytics_setup`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.core.cards import LabellerCard
from service.core.datasets import first_image_side, image_files
from service.core.repository import LABELLER, LABELLER_FILE, ModelRepository, ModelVersion
from service.core.yolo import read_names, write_data_yaml
from training.data import data_fingerprint
from training.labeller_evaluation import evaluate_onnx
from training.ultralytics_setup import block_downloads, import_ultralytics

GROUP_PATTERN = re.compile(r"^(g\d+)_")  # built-in corpus stems: g{group:03d}_{index:04d}
VAL_FRACTION = 0.2
ONNX_OPSET = 18


# --- Training recipes -----------------------------------------------------------------------


@dataclass(frozen=True)
class LabellerRecipe:
    """Image size and Ultralytics settings that train a labeller well for one kind of image."""

    name: str
    upsample: int = 1  # imgsz = image side x upsample (rounded up to a multiple of 32)
    train_args: dict[str, Any] = field(default_factory=dict)
    nbs_is_batch: bool = False  # no gradient accumulation: Ultralytics' nbs follows the batch

    def imgsz_for(self, side: int) -> int:
        """The training and inference size for images whose longer side is `side` pixels."""
        return max(32, -(-side * self.upsample // 32) * 32)

    def settings(self, batch: int) -> dict[str, Any]:
        """Ultralytics train arguments for this recipe at `batch`."""
        return {**self.train_args, **({"nbs": batch} if self.nbs_is_batch else {})}


# Ultralytics' own defaults at the images' size: for photo-sized bins (yolov5x in production).
STANDARD = LabellerRecipe("standard")
# Bins of <= 128 px (the CPU demo's 64x64), products 8-15 px across, trained from scratch.
# Measured with yolov5n on the demo corpus (12 groups x 60), held out on 4 groups of new
# products (`evaluate_labeller`), 2 shared CPU cores, ~4 min of training each:
# - imgsz 2x the image side: letterboxing upsamples, so stride-8 cells see 4 px instead of 8;
#   imgsz 64, 51 epochs: held-out mAP50 0.65; imgsz 128, 30 epochs: 0.97-0.99.
# - hue jitter (hsv_h): new products come in new colours. Without it the labeller still finds
#   every object (class-agnostic mAP50 0.99) but names classes by colour: mAP50 0.74.
#   (Many more product sets do the same: 40 groups x 30 without hue jitter gave 0.99.)
# - AdamW at a brisk lr, 1 warm-up epoch, no gradient accumulation (nbs = batch): from
#   scratch Ultralytics' SGD, 3 warm-up epochs and nbs 64 find nothing for the first epochs.
# - flipud: bins are seen from above, so up and down mean nothing.
SMALL_IMAGES = LabellerRecipe(
    "small-images",
    upsample=2,
    train_args={"optimizer": "AdamW", "lr0": 0.003, "warmup_epochs": 1, "hsv_h": 0.3,
                "flipud": 0.5},
    nbs_is_batch=True,
)
RECIPES = {recipe.name: recipe for recipe in (STANDARD, SMALL_IMAGES)}
SMALL_SIDE = 128  # images up to this side get SMALL_IMAGES from `recipe_for`


def recipe_for(side: int) -> LabellerRecipe:
    """The recipe for images whose longer side is `side` pixels."""
    return SMALL_IMAGES if side <= SMALL_SIDE else STANDARD


def resolve_recipe(recipe: LabellerRecipe | str, data: Path) -> LabellerRecipe:
    """A recipe object from a recipe or its name; "auto" picks by the corpus' image size."""
    if isinstance(recipe, LabellerRecipe):
        return recipe
    if recipe == "auto":
        return recipe_for(first_image_side(Path(data) / "images"))
    if recipe not in RECIPES:
        raise ValueError(f"unknown labeller recipe {recipe!r}; choose auto or one of "
                         f"{', '.join(RECIPES)}")
    return RECIPES[recipe]


# --- Corpus reading ------------------------------------------------------------------------


def corpus_fingerprint(data: Path) -> str:
    """`training.data.data_fingerprint` over every image and label file of a YOLO folder."""
    folders = [Path(data) / "images", Path(data) / "labels"]
    files = [p for folder in folders for p in folder.rglob("*") if p.is_file()]
    return data_fingerprint(files)


def split_by_group(
    images: list[Path], val_fraction: float = VAL_FRACTION, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Train/val split that keeps each product group (stem prefix `gNNN_`) on one side.

    Stems without a group prefix are each their own group. With a single group the split
    falls back to images, so validation still has something to measure.
    """
    groups: dict[str, list[Path]] = {}
    for image in images:
        match = GROUP_PATTERN.match(image.stem)
        groups.setdefault(match.group(1) if match else image.stem, []).append(image)
    keys = sorted(groups)
    if len(keys) == 1:
        groups = {image.stem: [image] for image in images}
        keys = sorted(groups)
    if len(keys) < 2:
        raise ValueError(f"need at least 2 images to split into train and val, got {len(images)}")
    rng = np.random.default_rng(seed)
    n_val = min(max(1, round(len(keys) * val_fraction)), len(keys) - 1)
    val_keys = set(rng.choice(keys, size=n_val, replace=False).tolist())
    train = [p for k in keys if k not in val_keys for p in groups[k]]
    val = [p for k in keys if k in val_keys for p in groups[k]]
    return train, val


def write_split(data: Path, work: Path, seed: int = 0) -> Path:
    """A data.yaml in `work` with group-split train/val lists over the corpus at `data`."""
    names = read_names(data)
    train, val = split_by_group(image_files(Path(data) / "images", recursive=True), seed=seed)
    work.mkdir(parents=True, exist_ok=True)
    (work / "train.txt").write_text("".join(f"{p.resolve()}\n" for p in train))
    (work / "val.txt").write_text("".join(f"{p.resolve()}\n" for p in val))
    return write_data_yaml(work, names, train="train.txt", val="val.txt", path=work)


# --- Training, export, publication ---------------------------------------------------------


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Silence Ultralytics' logger unless progress output is wanted."""
    if not enabled:
        yield
        return
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def _default_device() -> str:
    """Ultralytics' device string for `training.loop.pick_device` (BOXGEN_DEVICE=cpu honoured)."""
    from training.devices import pick_device

    return "0" if pick_device().type == "cuda" else "cpu"


def export_onnx(weights: Path, imgsz: int) -> Path:
    """Export Ultralytics weights to ONNX (dynamic batch); returns the .onnx path beside them."""
    import importlib.util

    from ultralytics import YOLO

    simplify = importlib.util.find_spec("onnxslim") is not None  # else it would pip-install it
    with block_downloads():
        path = YOLO(str(weights)).export(format="onnx", dynamic=True, opset=ONNX_OPSET,
                                         simplify=simplify, imgsz=imgsz, device="cpu")
    return Path(path)


def train_labeller(
    data: Path,
    models: Path,
    model_cfg: str = "yolov5x.yaml",
    epochs: int = 100,
    imgsz: int | None = None,
    batch: int = 16,
    device: str | None = None,
    workers: int = 0,
    seed: int = 0,
    progress: bool = True,
    heldout: Path | None = None,
    work_dir: Path | None = None,
    train_args: dict[str, Any] | None = None,
    recipe: LabellerRecipe | str | None = None,
) -> ModelVersion:
    """Train a YOLO labeller from `model_cfg` on the YOLO corpus `data`; publish it to `models`.

    `recipe` (a `LabellerRecipe`, its name, or "auto" to pick by image size; default
    `STANDARD`, Ultralytics' defaults) gives the Ultralytics settings and, when `imgsz` is None,
    the image size (`STANDARD` without one: 256). `train_args` go to Ultralytics as is, over the
    recipe's. `heldout` (optional) is a YOLO folder of product groups never trained on,
    measured with `evaluate_labeller`'s pipeline before publishing. The card records classes,
    imgsz, recipe and settings, data fingerprint, model cfg, epochs and metrics.
    """
    data, models = Path(data), Path(models)
    recipe, imgsz, settings = _plan(data, model_cfg, epochs, imgsz, batch, recipe, train_args)
    names = read_names(data)
    # Train on a group split of the corpus, in a work dir that goes away afterwards.
    owned = work_dir is None
    # Absolute: Ultralytics puts a relative `project` under ./runs/detect/.
    work = Path(tempfile.mkdtemp(prefix="boxgen-labeller-")) if owned else Path(work_dir).resolve()
    try:
        args = dict(data=str(write_split(data, work, seed)), epochs=epochs, imgsz=imgsz,
                    batch=batch, device=device or _default_device(), workers=workers, seed=seed,
                    deterministic=True, pretrained=False, project=str(work), name="train",
                    exist_ok=True, plots=False, verbose=progress, **settings)
        best, metrics = _fit(model_cfg, args, progress)
        # Export, check it loads in our pipeline, measure new products, publish.
        with _quiet(not progress):
            onnx_path = export_onnx(best, imgsz)
        if heldout is not None:
            held = evaluate_onnx(onnx_path, names, imgsz, Path(heldout))
            metrics.update({f"heldout_{k}": v for k, v in held.items()})
        card = LabellerCard(
            classes=names, imgsz=imgsz, model_cfg=str(model_cfg), epochs=epochs, batch=batch,
            seed=seed, recipe=recipe.name, train_args=settings, data=str(data.resolve()),
            data_fingerprint=corpus_fingerprint(data),
            heldout_data=str(Path(heldout).resolve()) if heldout is not None else None,
            metrics=metrics, onnx_opset=ONNX_OPSET,
            format="ultralytics-yolo onnx: images [N,3,S,S] RGB 0-1 -> [N, 4+nc, anchors]",
        )
        return ModelRepository(models).publish(LABELLER, {LABELLER_FILE: onnx_path}, card)
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def _plan(data: Path, model_cfg: str, epochs: int, imgsz: int | None, batch: int,
          recipe: LabellerRecipe | str | None, train_args: dict[str, Any] | None
          ) -> tuple[LabellerRecipe, int, dict[str, Any]]:
    """Check the arguments; the recipe, image size and Ultralytics settings they make."""
    if not str(model_cfg).endswith((".yaml", ".yml")):
        raise ValueError(
            f"model {model_cfg!r} is not a model yaml (e.g. yolov5n.yaml): boxgen trains from "
            "a config, it cannot download pretrained weights"
        )
    if not (data / "images").is_dir():
        raise FileNotFoundError(f"{data} is not a YOLO-layout folder: {data / 'images'} is missing")
    recipe = resolve_recipe(recipe or STANDARD, data)
    if imgsz is None:
        imgsz = 256 if recipe is STANDARD else recipe.imgsz_for(first_image_side(data / "images"))
    if epochs < 1 or imgsz < 32 or batch < 1:
        raise ValueError(
            f"need epochs >= 1, imgsz >= 32, batch >= 1 (got {epochs}, {imgsz}, {batch})"
        )
    return recipe, imgsz, {**recipe.settings(batch), **(train_args or {})}


def _fit(model_cfg: str, args: dict[str, Any], progress: bool) -> tuple[Path, dict[str, float]]:
    """Train with Ultralytics; the best weights and their final validation figures."""
    import_ultralytics()
    from ultralytics import YOLO

    model = YOLO(model_cfg)
    with block_downloads(), _quiet(not progress):
        model.train(**args)
    best = Path(model.trainer.best)
    if not best.is_file():
        best = Path(model.trainer.last)
    val = model.trainer.metrics or {}  # final validation of the best weights
    return best, {
        "val_mAP50": float(val.get("metrics/mAP50(B)", float("nan"))),
        "val_mAP50_95": float(val.get("metrics/mAP50-95(B)", float("nan"))),
        "val_precision": float(val.get("metrics/precision(B)", float("nan"))),
        "val_recall": float(val.get("metrics/recall(B)", float("nan"))),
    }
