"""Downstream gain, the final judge: does a detector trained with generated images get better?

    python bench/downstream.py --models out/demo/models [--sku demo-sku] [--n 100]

For a product group the base never saw (the demo's SKU group of the built-in corpus), the
same small YOLO (`yolov5n.yaml`, from scratch, at the demo size) trains on

    (a) the 10 real photos alone,
    (b) the 10 photos + N generated images that passed selection (`--select green`), labelled by
        boxgen's labeller, from the SKU's fine-tuned generator in `--models`,
    (c) the 10 photos + N copy-paste images (objects cut out of the 10 photos by their labels and
        pasted at new places on empty bins: `training.copy_paste`),
    (d) 100 real photos (the 10 + 90 more arrangements): the ceiling,

and, when selection passed fewer than N/2 images, (b') the 10 photos + N raw generated samples
(`--select none`), so the table still says what the generator itself is worth;
each is measured on the same held-out real photos of the group (other arrangements, never
trained on) with boxgen's onnxruntime pipeline and pycocotools (`evaluate_onnx`, the measure of
the labeller's held-out mAP). Training uses the labeller's `SMALL_IMAGES` recipe (imgsz twice
the image side, AdamW, hue jitter). Every row sees the same number of images per epoch (small
sets are repeated) and the same epochs, so rows differ in data only. The real photos are
rendered with the demo's seed, so the 10 photos are exactly the ones the demo fine-tuned on.
Writes the table to `bench/results/downstream.md` and prints it. About 10-15 minutes on 2 CPU
cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from service.datasets import image_files
from service.generator import GeneratorSession
from service.repository import ModelNotFound, ModelRepository
from training.copy_paste import write_copy_paste
from training.demo import DemoConfig
from training.labeller import SMALL_IMAGES, corpus_names, evaluate_onnx, export_onnx
from training.render import write_corpus
from training.ultralytics_setup import block_downloads, import_ultralytics

RESULTS = Path(__file__).parent / "results" / "downstream.md"
HOW_TO_GET_MODELS = (
    "bench/downstream.py needs a models dir holding a fine-tuned SKU generator and the labeller: "
    "run `make demo` (it writes out/demo/models with the SKU demo-sku) and pass "
    "--models out/demo/models"
)


@dataclass(frozen=True)
class Settings:
    models: Path
    sku: str = "demo-sku"
    group: int = DemoConfig.sku_group  # neither the base nor the labeller saw it
    seed: int = 0  # corpus seed of the demo
    photos: int = 10
    heldout: int = 100
    ceiling: int = 100
    n: int = 100  # generated (and copy-paste) images added to the photos
    model_cfg: str = "yolov5n.yaml"
    epochs: int = 50
    epoch_images: int = 320  # images per epoch for every row (small sets are repeated)
    batch: int = 16


@dataclass(frozen=True)
class Row:
    name: str
    train_images: int  # distinct images
    metrics: dict[str, float]
    seconds: float


def copy_yolo(files: list[Path], source: Path, out: Path, prefix: str = "") -> None:
    """Copy images and their label files from the YOLO folder `source` into `out`."""
    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, out / "images" / f"{prefix}{f.name}")
        label = source / "labels" / f"{f.stem}.txt"
        target = out / "labels" / f"{prefix}{f.stem}.txt"
        if label.is_file():
            shutil.copy(label, target)
        else:
            target.write_text("")


def real_photos(s: Settings, size: tuple[int, int], work: Path) -> tuple[Path, Path, Path]:
    """Render the group; split into the photos, held-out photos and the ceiling's 100."""
    total = s.photos + s.heldout + max(s.ceiling - s.photos, 0)
    corpus = write_corpus(work / "group", 1, total, size, s.seed, first_group=s.group)
    files = image_files(corpus / "images")
    photos, heldout, ceiling = work / "photos", work / "heldout", work / "real-ceiling"
    copy_yolo(files[: s.photos], corpus, photos)
    copy_yolo(files[s.photos : s.photos + s.heldout], corpus, heldout)
    copy_yolo(files[: s.photos] + files[s.photos + s.heldout :], corpus, ceiling)
    for folder in (photos, heldout, ceiling):
        shutil.copy(corpus / "data.yaml", folder / "data.yaml")
    return photos, heldout, ceiling


def train_set(
    parts: list[Path], out: Path, names: list[str], epoch_images: int
) -> tuple[Path, int]:
    """One training folder from YOLO `parts`, repeated to `epoch_images` images per epoch.

    Returns its data.yaml and the number of distinct images."""
    unique = out / "unique"
    for i, part in enumerate(parts):
        copy_yolo(image_files(part / "images"), part, unique, prefix=f"p{i}_")
    files = image_files(unique / "images")
    repeated = out / "repeated"
    for sub in ("images", "labels"):
        (repeated / sub).mkdir(parents=True, exist_ok=True)
    for i in range(epoch_images):
        f = files[i % len(files)]
        stem = f"r{i // len(files):03d}_{f.stem}"
        os.link(f, repeated / "images" / f"{stem}{f.suffix}")
        os.link(unique / "labels" / f"{f.stem}.txt", repeated / "labels" / f"{stem}.txt")
    # Validation (Ultralytics wants some) is the distinct training images: no held-out peeking.
    spec = {"path": str(out.resolve()), "train": "repeated/images", "val": "unique/images",
            "names": dict(enumerate(names))}
    (out / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out / "data.yaml", len(files)


def train_and_measure(
    name: str, parts: list[Path], heldout: Path, s: Settings, imgsz: int, work: Path,
    train_args: dict[str, Any],
) -> Row:
    """Train the small YOLO from scratch on `parts`; measure its last weights on `heldout`."""
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    names = corpus_names(heldout)
    data, distinct = train_set(parts, work / name, names, s.epoch_images)
    started = time.monotonic()
    LOGGER.setLevel(logging.WARNING)
    model = YOLO(s.model_cfg)
    with block_downloads():
        model.train(data=str(data), epochs=s.epochs, imgsz=imgsz, batch=s.batch,
                    device="0" if _cuda() else "cpu", workers=0, seed=s.seed,
                    deterministic=True, pretrained=False, project=str(work / name),
                    name="train", exist_ok=True, plots=False, verbose=False, val=False,
                    **train_args)
    onnx_path = export_onnx(Path(model.trainer.last), imgsz)
    seconds = time.monotonic() - started
    metrics = evaluate_onnx(onnx_path, names, imgsz, heldout)
    return Row(name, distinct, metrics, seconds)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def table(rows: list[Row]) -> str:
    lines = ["| training data | distinct images | mAP50 | mAP50-95 | precision | recall | "
             "train s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r.metrics
        lines.append(f"| {r.name} | {r.train_images} | {m['mAP50']:.3f} | {m['mAP50_95']:.3f} | "
                     f"{m['precision']:.3f} | {m['recall']:.3f} | {r.seconds:.0f} |")
    return "\n".join(lines)


def run(s: Settings, out: Path = RESULTS, keep: Path | None = None) -> list[Row]:
    """Build the four training sets, train and measure each; write and return the rows."""
    from training.generate import generate_dataset

    if not Path(s.models).is_dir():
        raise FileNotFoundError(f"no models dir {s.models}. {HOW_TO_GET_MODELS}")
    repo = ModelRepository(s.models)
    try:
        entry = repo.resolve(s.sku)
    except ModelNotFound:
        raise FileNotFoundError(
            f"{s.models} has no generator for SKU {s.sku!r} (has: {repo.skus() or 'none'}). "
            f"{HOW_TO_GET_MODELS}") from None
    resolution = GeneratorSession(entry.file("generator.onnx")).resolution
    size = (resolution, resolution)
    imgsz = SMALL_IMAGES.imgsz_for(resolution)
    import_ultralytics()
    started = time.monotonic()
    work = Path(keep or tempfile.mkdtemp(prefix="boxgen-downstream-"))
    try:
        photos, heldout, ceiling = real_photos(s, size, work)
        generated = work / "generated"
        result = generate_dataset(s.sku, s.n, generated, s.models, seed=s.seed, select="green")
        n_gen = len(result.images)
        copy_paste = write_copy_paste(photos, work / "copy-paste", s.n, seed=s.seed)
        print(f"{s.sku} v{entry.version}: {n_gen} generated images passed selection "
              f"({result.passed}/{result.tried} samples); {s.n} copy-paste images",
              flush=True)
        plans = [
            (f"(a) {s.photos} real", [photos]),
            (f"(b) {s.photos} real + {n_gen} generated (green)", [photos, generated]),
            (f"(c) {s.photos} real + {s.n} copy-paste", [photos, copy_paste]),
            (f"(d) {s.ceiling} real (ceiling)", [ceiling]),
        ]
        if n_gen == 0:  # nothing passed: the row would be (a) again
            plans.pop(1)
        if n_gen < s.n / 2:
            # Selection kept few: show what the generator's raw samples would do, too.
            raw = work / "generated-raw"
            generate_dataset(s.sku, s.n, raw, s.models, seed=s.seed, select="none")
            plans.insert(2, (f"(b') {s.photos} real + {s.n} generated (raw, unselected)",
                             [photos, raw]))
        rows = []
        for name, parts in plans:
            key = name.split(")")[0].strip("(").replace("'", "-raw")
            row = train_and_measure(key, parts, heldout, s, imgsz, work / "runs",
                                    SMALL_IMAGES.settings(s.batch))
            rows.append(Row(name, row.train_images, row.metrics, row.seconds))
            print(f"{name}: mAP50 {row.metrics['mAP50']:.3f}, mAP50-95 "
                  f"{row.metrics['mAP50_95']:.3f} ({row.seconds:.0f} s)", flush=True)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - started
    report = "\n".join([
        "# Downstream gain (bench/downstream.py)",
        "",
        f"Group {s.group} of the built-in corpus (seed {s.seed}), {resolution}×{resolution}; "
        f"SKU `{s.sku}` version {entry.version} from `{s.models}`. Each row trains "
        f"`{s.model_cfg}` from scratch (recipe `{SMALL_IMAGES.name}`) at imgsz {imgsz} for "
        f"{s.epochs} epochs of "
        f"{s.epoch_images} images (batch {s.batch}, seed {s.seed}; smaller sets repeated), then "
        f"its last weights are measured on {s.heldout} held-out real images of the group "
        "(onnxruntime + pycocotools, `training.labeller.evaluate_onnx`; precision/recall at "
        "conf 0.25, IoU 0.5). Generated images: `generate_dataset(select='green')`, "
        f"{result.passed}/{result.tried} samples passed. One seed per row: differences of a few "
        "points are noise.",
        "",
        table(rows),
        "",
        f"Total {total:.0f} s on {'CUDA' if _cuda() else f'CPU ({os.cpu_count()} cores)'}.",
        "",
        "```json",
        json.dumps({"settings": {k: str(v) if isinstance(v, Path) else v
                                 for k, v in s.__dict__.items()},
                    "rows": [r.__dict__ for r in rows]}, indent=1),
        "```",
        "",
    ])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(table(rows))
    print(f"wrote {out} ({total:.0f} s)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="models dir with the SKU (from `make demo`)")
    parser.add_argument("--sku", default=Settings.sku)
    parser.add_argument("--group", type=int, default=Settings.group)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    parser.add_argument("--n", type=int, default=Settings.n, help="generated images to add")
    parser.add_argument("--heldout", type=int, default=Settings.heldout)
    parser.add_argument("--epochs", type=int, default=Settings.epochs)
    parser.add_argument("--epoch-images", type=int, default=Settings.epoch_images)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, help="keep the work folder here")
    args = parser.parse_args()
    if args.models is None:
        sys.exit(HOW_TO_GET_MODELS)
    s = Settings(models=args.models, sku=args.sku, group=args.group, seed=args.seed, n=args.n,
                 heldout=args.heldout, epochs=args.epochs, epoch_images=args.epoch_images)
    try:
        run(s, args.out, args.keep)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
