"""The `compose` fine-tune: cut the SKU's products out of its photos, train its refiner, publish.

1. The photos (any size; YOLO labels when given, else the labeller's boxes) become an object
   bank (`training.cutouts`): cut-outs, the empty bin, counts and the floor.
2. The refiner starts from the base's (`_base`'s `refiner.pt`; the identity without one) and
   trains as a WGAN-GP against the photos on composites of the bank (`training.refiner`), at
   `TRAIN_SIZE`, the default output size. A killed fine-tune resumes from its checkpoint.
3. With a labeller in the repository, the selector is calibrated on the photos (novelty,
   quality, fidelity and label agreement) and `eval_samples` refined composites are judged
   for the card.
4. The bank, the refiner (ONNX, parity-checked) and the selection are published as one new
   version with `recipe: compose`; the previous version serves until then.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from service.core.cards import DEFAULT_REFINE, GeneratorCard
from service.core.compose import DEFAULT_SIZE, Distractors, compose
from service.core.compose_session import ComposeSession
from service.core.datasets import IMAGE_SUFFIXES, read_image
from service.core.labeller_session import LabellerSession
from service.core.limits import MAX_PHOTOS, MIN_PHOTOS
from service.core.object_bank import BANK_DIR, ObjectBank
from service.core.repository import (
    BASE,
    BASE_REFINER_FILE,
    LABELLER,
    REFINER_FILE,
    ModelNotFound,
    ModelRepository,
    ModelVersion,
)
from service.core.selector import ImageScore, Selector, category_fractions
from service.core.yolo import pixel_boxes, read_names, read_rows
from training.callbacks import StatusFile
from training.checkpoint import load_checkpoint
from training.cutouts import Photo, build_bank, to_working_size
from training.data import data_fingerprint, find_images
from training.refiner import RefinerConfig, export_refiner, refiner_profile, train_refiner
from training.render import CLASSES

TRAIN_SIZE = DEFAULT_SIZE  # the refiner learns at the size /generate serves by default
EVAL_SAMPLES = 64
PRETRAIN_CHUNK = 10  # corpus images per pretraining bank: "a SKU's ten photos"
PRETRAIN_BANKS = 24  # banks drawn from the corpus at most, spread over it


def read_photos(images: Path, labels: Path | None, models: Path
                ) -> tuple[list[Photo], list[str], str]:
    """The photos at one working size with their rows, the class names, and where the rows
    came from ("labels" or "labeller").

    Labels are YOLO files beside the images (a YOLO folder) or in `labels`, paired by name;
    without any, the repository's labeller finds the products."""
    if not Path(images).is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    files, label_files = find_images(Path(images))
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    if labels is not None:
        stems = {f.stem for f in files}
        for extra in sorted(Path(labels).glob("*.txt")):
            if extra.stem not in stems:
                raise ValueError(f"label file {extra.name} matches no image (labels pair with "
                                 "images by name)")
        label_files = [p if p.is_file() else None
                       for p in (Path(labels) / f"{f.stem}.txt" for f in files)]
    if not MIN_PHOTOS <= len(files) <= MAX_PHOTOS:
        raise ValueError(f"{images} holds {len(files)} images; {MIN_PHOTOS} to {MAX_PHOTOS} "
                         "needed (ten recommended)")
    pixels = to_working_size([read_image(f) for f in files])
    names = read_names(images, required=False)
    if any(label_files):
        rows = [read_rows(p) if p else np.zeros((0, 5)) for p in label_files]
        source = "labels"
    else:
        try:
            labeller = LabellerSession.from_repository(models)
        except ModelNotFound:
            raise ValueError("compose needs the products' boxes: give YOLO labels with the "
                             "photos, or publish a labeller (`boxgen train-labeller`)") from None
        rows = [d.yolo_rows() for d in labeller.label(pixels)]
        names, source = list(labeller.classes), "labeller"
    top = max((int(r[:, 0].max()) + 1 for r in rows if len(r)), default=0)
    if names is None:  # no data.yaml: the built-in classes, extended if labels use more
        names = list(CLASSES) + [f"class{i}" for i in range(len(CLASSES), top)]
    elif top > len(names):
        raise ValueError(f"labels use class {top - 1}, but data.yaml names {len(names)} classes")
    photos = [Photo(f.stem, image, r) for f, image, r in zip(files, pixels, rows, strict=True)]
    return photos, list(names), source


def base_refiner(models: Path) -> tuple[dict[str, Any] | None, str]:
    """The base's pretrained refiner and its name, or (None, "identity") without one."""
    try:
        version = ModelRepository(models).resolve(BASE)
    except ModelNotFound:
        return None, "identity"
    path = version.file(BASE_REFINER_FILE)
    if not path.is_file():
        return None, "identity"
    return load_checkpoint(path), f"{BASE}/{version.version}"


def refiner_config(init: dict[str, Any] | None, overrides: dict[str, Any] | None
                   ) -> RefinerConfig:
    """The default profile (shaped like the base's refiner), then the caller's overrides;
    `iterations` means refiner steps."""
    cfg = refiner_profile("default")
    if init is not None:
        cfg = RefinerConfig.from_dict({**cfg.to_dict(), **init["config"],
                                       "steps": cfg.steps, "seed": cfg.seed})
    changes = dict(overrides or {})
    if "iterations" in changes:
        changes["steps"] = changes.pop("iterations")
    return cfg.replace(**changes)


def resized(image: np.ndarray, size: int) -> np.ndarray:
    """`image` with its long side scaled to `size`."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    return cv2.resize(image, (max(round(w * scale), 1), max(round(h * scale), 1)),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def finetune_compose(
    sku: str,
    images: Path,
    models: Path,
    out: Path,
    labels: Path | None = None,
    empty: Path | None = None,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    status: StatusFile | None = None,
    refine: bool = DEFAULT_REFINE,
) -> ModelVersion:
    """Build the bank, train the refiner (unless `refine` is False), judge, publish."""
    models, out = Path(models), Path(out)
    photos, names, source = read_photos(images, labels, models)
    bank = build_bank(photos, names, read_image(empty) if empty is not None else None)
    card: dict[str, Any] = {
        "recipe": "compose", "sku": sku, "run": str(out.resolve()), "images": len(photos),
        "data_fingerprint": data_fingerprint(find_images(Path(images))[0]),
        "labels": {"files": sum(len(p.rows) > 0 for p in photos),
                   "boxes": int(sum(len(p.rows) for p in photos))},
        "label_source": source,
        "bank": bank.statistics(),
    }

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        bank.save(staged)
        files = {f"{BANK_DIR}/{p.name}": p for p in sorted((staged / BANK_DIR).iterdir())}
        if refine:
            init, parent = base_refiner(models)
            cfg = refiner_config(init, overrides)
            # The default output size, unless a wide photo's short side would be under a crop.
            size = max(TRAIN_SIZE, -(-cfg.crop * max(bank.shape) // min(bank.shape)))
            train_photos = [resized(p.image, size) for p in photos]

            def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
                if status is not None:
                    status.update(stage="training", iteration=step, iterations=total,
                                  metrics=metrics)

            # The run folder holds the refiner's checkpoints, where a resumed job looks.
            state = train_refiner(train_photos, composites([bank], size), cfg, out, init=init,
                                  progress=progress, on_step=on_step)
            if status is not None:
                status.update(stage="publishing")
            parity = export_refiner(state, staged / REFINER_FILE)
            files[REFINER_FILE] = staged / REFINER_FILE
            card["refiner"] = {"parent": parent, "steps": state["step"], "config": cfg.to_dict(),
                               "onnx_parity_max_abs": parity, "metrics": state["metrics"]}
            card["iterations"] = state["step"]
        elif status is not None:
            status.update(stage="publishing")
        if ModelRepository(models).versions(LABELLER):
            selector, report = judge(staged, photos, models)
            card["selection"] = selector.save(staged)
            files[selector.describe()["file"]] = staged / selector.describe()["file"]
            card["evaluation"] = report
        return ModelRepository(models).publish(sku, files, GeneratorCard(**card))


def pretrain_refiner(corpus: Path, out: Path, cfg: RefinerConfig | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """The base refiner: trained like a SKU's, on composites of banks cut from the corpus.

    Consecutive images (sorted by name: the built-in corpus is group by group) form banks of
    `PRETRAIN_CHUNK`, like a SKU's photos; at most `PRETRAIN_BANKS`, spread over the corpus.
    A run in `out` resumes."""
    files, label_files = find_images(Path(corpus))
    chunks = [list(range(i, min(i + PRETRAIN_CHUNK, len(files))))
              for i in range(0, len(files), PRETRAIN_CHUNK)]
    chunks = [chunks[int(j)] for j in np.unique(np.linspace(0, len(chunks) - 1,
                                                            min(PRETRAIN_BANKS, len(chunks))))]
    banks, real = [], []
    for chunk in chunks:
        pixels = to_working_size([read_image(files[i]) for i in chunk])
        photos = [Photo(files[i].stem, image,
                        read_rows(label_files[i]) if label_files[i] else np.zeros((0, 5)))
                  for i, image in zip(chunk, pixels, strict=True)]
        if len(photos) >= 2 and any(len(p.rows) for p in photos):
            banks.append(build_bank(photos, []))
            real += [resized(p.image, TRAIN_SIZE) for p in photos]
    if not banks:
        raise ValueError(f"{corpus} has no labelled products to pretrain the refiner on")

    return train_refiner(real, composites(banks, TRAIN_SIZE), cfg or refiner_profile("default"),
                         Path(out), progress=progress)


def composites(banks: list[ObjectBank], size: int
               ) -> Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]:
    """What the refiner trains on: `k` composites (images, masks) of a random bank each."""

    def make(k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        made = [compose(banks[int(rng.integers(len(banks)))], size, rng) for _ in range(k)]
        return np.stack([c.image for c in made]), np.stack([c.mask for c in made])

    return make


def judge(staged: Path, photos: list[Photo], models: Path) -> tuple[Selector, dict[str, Any]]:
    """The selector calibrated on the photos, and its verdict on `EVAL_SAMPLES` images made
    exactly as the published version will make them."""
    labeller = LabellerSession.from_repository(models)
    pixels = [p.image for p in photos]
    detections = labeller.label(pixels)
    if any(len(d) for d in detections):
        selector = Selector.fit(pixels, detections,
                                [pixel_boxes(p.rows, p.image.shape[:2]) for p in photos])
    else:  # the labeller sees none of this product: novelty and fidelity only
        selector = Selector.fit(pixels, None)
    scores = judge_samples(ComposeSession.from_folder(staged), selector, labeller,
                           EVAL_SAMPLES, TRAIN_SIZE)
    report = {"n": len(scores), "seed": 0, "size": TRAIN_SIZE,
              "categories": category_fractions(scores),
              "reasons": _reasons(scores)}
    return selector, report


def judge_samples(session: ComposeSession, selector: Selector, labeller: LabellerSession,
                  n: int, size: int, seed: int = 0, distractors: Distractors | None = None
                  ) -> list[ImageScore]:
    """`n` raw samples (seed `seed`, maybe with `distractors`) judged, their labels checked
    against the labeller's."""
    images, built = session.sample(n, seed=seed, size=size, distractors=distractors)
    return selector.score(images, labeller.label(images), [b.boxes for b in built], None,
                          [b.foreign for b in built])


def _reasons(scores: list[Any]) -> dict[str, int]:
    """How many images fell out for each kind of reason (first words of the reason)."""
    counts: dict[str, int] = {}
    for s in scores:
        if s.category in ("white", "red"):
            key = s.reason.split(" ")[0]
            counts[key] = counts.get(key, 0) + 1
    return counts

