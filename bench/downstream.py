"""Downstream gain, the final judge: does a detector trained with generated images get better?

    python bench/downstream.py --models out/demo/models            # the full table, ~2 h CPU
    python bench/downstream.py --quick                             # smoke test, ~1 min
    python bench/downstream.py --photos DIR --more-real DIR --test DIR [--models M]  # your data

For each product group (built-in cluttered bins that neither the base nor the labeller saw, or
your own YOLO folders) the same small YOLO (`yolov5n.yaml`, from scratch) trains on

    (a) the 10 real photos alone,
    (b) the 10 photos + N generated images, one row per generator (`RECIPES`: compose, compose
        without its refiner, gan): each is fine-tuned on the 10 photos from `--models`' base
        and labeller, exactly as `boxgen finetune` does, and its images are those `/generate`
        serves (`select=green`, 256 px); when selection passes fewer than N/2, its raw samples
        are used and the row says so,
    (c) the 10 photos + N copy-paste images (`training.copy_paste`, the cheap baseline),
    (d) 100 real photos, the 10 + 90 more arrangements: the ceiling,
    (e) the N generated images alone, no real photo: do they carry the product on their own?

Every row trains for the same number of gradient steps (small sets are repeated to
`epoch_images` per epoch), once per seed (the seed sets the detector's initialisation and the
data order), and is measured with onnxruntime + pycocotools (`training.labeller_evaluation`)
on >= 100 held-out real images of the group. Reported: mean ± standard deviation over seeds of
mAP50-95 and mAP50, and **gap closed** = (row − a) / (d − a): 0 is no better than the 10
photos, 1 is as good as 90 more labelled photos. When (d) − (a) < `MIN_ROOM` the bench says it
cannot discriminate instead of giving a verdict.

Training runs in `--jobs` single-threaded processes side by side (2 on a 2-core CPU). Each run
writes `result.json` under `--work`, and a rerun reuses finished runs whose settings match, so
`--rows`, `--groups` and `--seeds` can add to a table piece by piece. Writes the markdown table
and a bar chart to `bench/results/` (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from service.core.datasets import first_image_side, image_files
from service.core.yolo import read_names, write_data_yaml
from training.copy_paste import write_copy_paste
from training.labeller import SMALL_IMAGES, LabellerRecipe
from training.labeller_evaluation import evaluate_onnx

RESULTS = Path(__file__).parent / "results"
# The generators a SKU can be fine-tuned with (`boxgen finetune` arguments): one (b) and (e)
# row each. compose-raw is compose without its refiner: the refiner stays on only if it wins.
RECIPES: dict[str, dict[str, Any]] = {
    "compose": {"recipe": "compose", "refine": True},
    "compose-raw": {"recipe": "compose", "refine": False},
    "gan": {"recipe": "gan"},
}
ROWS = ("real", *(f"+{r}" for r in RECIPES), "+copy-paste", "ceiling", *(f"{r}-only"
                                                                      for r in RECIPES))
MIN_ROOM = 0.05  # (d) − (a) in mAP50-95 under which the bench cannot tell rows apart
# The detector's recipe: SMALL_IMAGES' settings (AdamW, short warm-up, hue jitter: measured
# best for short from-scratch runs) at the images' own size.
DETECTOR = LabellerRecipe("downstream", upsample=1, train_args=SMALL_IMAGES.train_args,
                          nbs_is_batch=True)
HOW_TO_GET_MODELS = (
    "the generator rows need a models dir with a base and a labeller (`_base`, `_labeller`): "
    "run `make demo` and pass --models out/demo/models, or leave those rows out with --rows")


@dataclass(frozen=True)
class Settings:
    """What decides the table. Fields marked (run) decide each training run's result."""

    groups: tuple[int, ...] = (30, 31, 32)  # cluttered groups; the demo's base saw tidy 0-11
    seeds: tuple[int, ...] = (0, 1, 2)
    rows: tuple[str, ...] = ROWS
    scene: str = "cluttered"
    size: tuple[int, int] = (256, 256)
    corpus_seed: int = 0
    photos: int = 10
    heldout: int = 100
    ceiling: int = 100
    n: int = 100  # generated (and copy-paste) images added to the photos
    model_cfg: str = "yolov5n.yaml"  # (run)
    # 40 epochs of 256 at imgsz 160 is what leaves room (group 30, one seed): 20 epochs at
    # imgsz 256 gave (d) − (a) = 0.042 mAP50-95, 40 at 256 0.104, 40 at 160 0.162 (and
    # costs 0.4× of 256).
    epochs: int = 40  # (run)
    epoch_images: int = 256  # (run) images per epoch for every row
    batch: int = 16  # (run)
    imgsz: int | None = 160  # (run) the detector's input side; None: the images' (<= 640)
    models: str | None = None  # models dir with `_base` and `_labeller`, for the recipe rows
    finetune_iterations: int | None = None  # None: the product's default (FINETUNE)
    custom: tuple[str, str, str] | None = None  # --photos, --more-real, --test instead

    def run_key(self, imgsz: int) -> dict[str, Any]:
        return {"model_cfg": self.model_cfg, "epochs": self.epochs,
                "epoch_images": self.epoch_images, "batch": self.batch, "n": self.n,
                "imgsz": imgsz}


QUICK = Settings(groups=(30,), seeds=(0,), size=(96, 96), heldout=20, ceiling=20, n=20,
                 epochs=2, epoch_images=32, batch=8, imgsz=96, finetune_iterations=20)
MAX_IMGSZ = 640  # the detector's input for photo-sized images (Ultralytics' default)


@dataclass
class GroupData:
    """The YOLO folders of one group: photos, held-out test images, the ceiling's set and the
    added sets by row."""

    name: str
    photos: Path
    test: Path
    ceiling: Path
    added: dict[str, Path] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # per row: how its images were made


# ---------------------------------------------------------------- data


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


def built_in_group(s: Settings, group: int, work: Path) -> GroupData:
    """Render a group of the built-in corpus; split it into photos, test and ceiling sets."""
    from training.render import write_corpus

    done = work / "split.done"
    photos, test, ceiling = work / "photos", work / "test", work / "real-ceiling"
    if not done.is_file():
        total = s.photos + s.heldout + max(s.ceiling - s.photos, 0)
        corpus = write_corpus(work / "corpus", 1, total, s.size, s.corpus_seed,
                              first_group=group, scene=s.scene)
        files = image_files(corpus / "images")
        copy_yolo(files[: s.photos], corpus, photos)
        copy_yolo(files[s.photos : s.photos + s.heldout], corpus, test)
        copy_yolo(files[: s.photos] + files[s.photos + s.heldout :], corpus, ceiling)
        for folder in (photos, test, ceiling):
            shutil.copy(corpus / "data.yaml", folder / "data.yaml")
        done.touch()
    return GroupData(f"g{group}", photos, test, ceiling)


def custom_group(photos: Path, more_real: Path, test: Path, work: Path) -> GroupData:
    """The user's own YOLO folders; the ceiling is the photos plus the more real ones."""
    for folder in (photos, more_real, test):
        read_names(folder)  # each must be a YOLO folder with class names
    ceiling = work / "real-ceiling"
    if not (work / "split.done").is_file():
        copy_yolo(image_files(photos / "images"), photos, ceiling, "p_")
        copy_yolo(image_files(more_real / "images"), more_real, ceiling, "m_")
        shutil.copy(photos / "data.yaml", ceiling / "data.yaml")
        (work / "split.done").touch()
    return GroupData(photos.name, photos, test, ceiling)


def add_copy_paste(data: GroupData, n: int, work: Path) -> None:
    out = work / "copy-paste"
    if not (out / "data.yaml").is_file():
        write_copy_paste(data.photos, out, n, seed=0)
    data.added["copy-paste"] = out


def add_recipe(recipe: str, data: GroupData, n: int, models: Path, work: Path,
               iterations: int | None = None) -> str:
    """Fine-tune `recipe` on the group's photos into a scratch copy of `models`, then write N
    images as `/generate` serves them. Returns a note on how the images were made."""
    from service.core.pipeline import generate_dataset
    from training.finetune import finetune

    out, note_file = work / recipe, work / f"{recipe}.note"
    if note_file.is_file():
        return note_file.read_text()
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    scratch = work / f"{recipe}-models"
    if not scratch.is_dir():  # the base and the labeller only: the SKU is ours alone
        for name in ("_base", "_labeller"):
            if not (models / name).is_dir():
                raise FileNotFoundError(f"{models} has no {name}; {HOW_TO_GET_MODELS}")
            shutil.copytree(models / name, scratch / name)
    sku = f"bench-{data.name}"
    if not (scratch / sku).is_dir():
        finetune(sku, data.photos, scratch, out=work / f"{recipe}-run", progress=False,
                 labels=data.photos / "labels", **RECIPES[recipe],
                 overrides=None if iterations is None else {"iterations": iterations})
    shutil.rmtree(out, ignore_errors=True)
    result = generate_dataset(sku, n, out, scratch, seed=0, select="green")
    note = f"{len(result.images)} passed selection ({result.passed}/{result.tried} samples)"
    if len(result.images) < n / 2:  # too few to tell: show what the raw samples do
        shutil.rmtree(out)
        generate_dataset(sku, n, out, scratch, seed=0, select="none")
        note += f"; too few, so {n} raw samples"
    note_file.write_text(note)
    return note


# ---------------------------------------------------------------- one training run


def train_set(parts: list[Path], out: Path, names: list[str], epoch_images: int) -> Path:
    """One training folder from YOLO `parts`, repeated to `epoch_images` images per epoch."""
    shutil.rmtree(out, ignore_errors=True)
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
    return write_data_yaml(out, names, train="repeated/images", val="unique/images", path=out)


def train_and_measure(parts: list[str], test: str, seed: int, imgsz: int, key: dict[str, Any],
                      work: str) -> dict[str, Any]:
    """Train the detector from scratch on the YOLO folders `parts`; measure it on `test`.

    Runs in a worker process on one thread, and writes `work/result.json` last."""
    import logging

    import torch

    from training.labeller import export_onnx
    from training.ultralytics_setup import block_downloads, import_ultralytics

    torch.set_num_threads(1)
    import_ultralytics()
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    LOGGER.setLevel(logging.WARNING)
    run = Path(work)
    names = read_names(Path(test))
    data = train_set([Path(p) for p in parts], run / "data", names, key["epoch_images"])
    distinct = len(image_files(run / "data" / "unique" / "images"))
    started = time.monotonic()
    model = YOLO(key["model_cfg"])
    with block_downloads():
        model.train(data=str(data), epochs=key["epochs"], imgsz=imgsz, batch=key["batch"],
                    device="0" if torch.cuda.is_available() else "cpu", workers=0, seed=seed,
                    deterministic=True, pretrained=False, project=str(run), name="train",
                    exist_ok=True, plots=False, verbose=False, val=False,
                    **DETECTOR.settings(key["batch"]))
    onnx_path = export_onnx(Path(model.trainer.last), imgsz)
    seconds = time.monotonic() - started
    metrics = evaluate_onnx(onnx_path, names, imgsz, Path(test))
    result = {"key": key, "seed": seed, "distinct": distinct, "seconds": seconds, **metrics}
    shutil.rmtree(run / "data", ignore_errors=True)
    shutil.rmtree(run / "train", ignore_errors=True)  # weights: tens of MB a run
    (run / "result.json").write_text(json.dumps(result, indent=1))
    return result


def finished(run: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The result of a finished run with the same settings, else None."""
    try:
        result = json.loads((run / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("key") == key else None


# ---------------------------------------------------------------- the table


def row_parts(row: str, data: GroupData) -> list[Path]:
    if row == "real":
        return [data.photos]
    if row == "ceiling":
        return [data.ceiling]
    if row.endswith("-only"):
        return [data.added[row.removesuffix("-only")]]
    return [data.photos, data.added[row.removeprefix("+")]]


def row_title(row: str, s: Settings, ceiling: int) -> str:
    if row == "real":
        return f"(a) {s.photos} real"
    if row == "ceiling":
        return f"(d) {ceiling} real (ceiling)"
    if row == "+copy-paste":
        return f"(c) {s.photos} real + {s.n} copy-paste"
    if row.endswith("-only"):
        return f"(e) {s.n} {row.removesuffix('-only')} alone"
    return f"(b) {s.photos} real + {s.n} {row.removeprefix('+')}"


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: dict[str, dict[str, list[dict]]], s: Settings) -> dict[str, Any]:
    """Means, spreads and gap closed per group and over all groups, from raw run results."""
    summary: dict[str, Any] = {"groups": {}, "overall": {}}
    for group, rows in results.items():
        g = {}
        for row, runs in rows.items():
            m95, m50 = mean_sd([r["mAP50_95"] for r in runs]), mean_sd([r["mAP50"] for r in runs])
            g[row] = {"mAP50_95": m95, "mAP50": m50, "runs": len(runs),
                      "distinct": runs[0]["distinct"]}
        if "real" in g and "ceiling" in g:
            low, high = g["real"]["mAP50_95"][0], g["ceiling"]["mAP50_95"][0]
            for row in g.values():
                row["gap"] = (row["mAP50_95"][0] - low) / (high - low) if high > low else None
            g["room"] = high - low
        summary["groups"][group] = g
    for row in s.rows:
        per_group = [g[row] for g in summary["groups"].values() if row in g]
        if not per_group:
            continue
        pooled = [(statistics.fmean([x[m][1] ** 2 for x in per_group])) ** 0.5
                  for m in ("mAP50_95", "mAP50")]
        gaps = [x["gap"] for x in per_group if x.get("gap") is not None]
        summary["overall"][row] = {
            "mAP50_95": (statistics.fmean(x["mAP50_95"][0] for x in per_group), pooled[0]),
            "mAP50": (statistics.fmean(x["mAP50"][0] for x in per_group), pooled[1]),
            "gap": mean_sd(gaps) if gaps else None, "groups": len(per_group)}
    rooms = [g["room"] for g in summary["groups"].values() if "room" in g]
    summary["room"] = statistics.fmean(rooms) if rooms else None
    # Paired differences per (group, seed) against copy-paste and against the photos alone.
    summary["paired"] = {}
    for row in s.rows:
        for ref in ("+copy-paste", "real"):
            diffs = [a["mAP50_95"] - b["mAP50_95"] for rows in results.values()
                     if row in rows and ref in rows and row != ref
                     for a in rows[row] for b in rows[ref] if a["seed"] == b["seed"]]
            if len(diffs) > 1:
                mean, sd = mean_sd(diffs)
                summary["paired"][f"{row} vs {ref}"] = (mean, sd / len(diffs) ** 0.5, len(diffs))
    return summary


def fmt(pair: tuple[float, float] | None, digits: int = 3) -> str:
    return "–" if pair is None else f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def report(summary: dict[str, Any], results: dict[str, dict[str, list[dict]]], s: Settings,
           notes: dict[str, dict[str, str]], ceiling: int, imgsz: int, seconds: float) -> str:
    """The markdown table: overall rows, the verdict, and each group's rows."""
    lines = ["| training data | mAP50-95 | mAP50 | gap closed |", "|---|---:|---:|---:|"]
    for row, r in summary["overall"].items():
        lines.append(f"| {row_title(row, s, ceiling)} | {fmt(r['mAP50_95'])} | "
                     f"{fmt(r['mAP50'])} | {fmt(r['gap'], 2)} |")
    room = summary["room"]
    verdict = []
    if room is None:
        verdict.append("No verdict: rows (a) and (d) are both needed for gap closed.")
    elif room < MIN_ROOM:
        verdict.append(f"**The bench does not discriminate here**: {ceiling} real images beat "
                       f"{s.photos} by only {room:.3f} mAP50-95 (< {MIN_ROOM}), so no row can "
                       "show a gain.")
    else:
        verdict.append(f"Room to gain: (d) − (a) = {room:.3f} mAP50-95.")
        for name, (mean, se, k) in summary["paired"].items():
            if name.startswith(("real", "ceiling")):
                continue
            sign = "within noise" if abs(mean) < 2 * se else ("better" if mean > 0 else "worse")
            verdict.append(f"- {name}: {mean:+.3f} ± {se:.3f} (paired over {k} runs): {sign}")
    per_group = []
    for group, g in summary["groups"].items():
        per_group += [f"\n**{group}**" + (f" (room {g['room']:.3f})" if "room" in g else ""),
                      "", "| training data | distinct images | mAP50-95 | mAP50 | gap closed |",
                      "|---|---:|---:|---:|---:|"]
        for row in s.rows:
            if row not in g:
                continue
            r, note = g[row], notes.get(group, {}).get(row.strip("+").removesuffix("-only"))
            gap = "–" if r.get("gap") is None else f"{r['gap']:.2f}"
            per_group.append(f"| {row_title(row, s, ceiling)}{f' ({note})' if note else ''} | "
                             f"{r['distinct']} | {fmt(r['mAP50_95'])} | {fmt(r['mAP50'])} | "
                             f"{gap} |")
    groups = ", ".join(map(str, s.groups))
    where = (f"Your data ({', '.join(s.custom)})" if s.custom else
             f"{s.scene.capitalize()} groups {groups} of the built-in corpus "
             f"(`--scene {s.scene}`, seed {s.corpus_seed}), {s.size[0]}×{s.size[1]}")
    head = [
        "# Downstream gain (bench/downstream.py)", "",
        f"{where}. Each row trains `{s.model_cfg}` from scratch at "
        f"imgsz {imgsz} for {s.epochs} epochs of {s.epoch_images} "
        f"images (batch {s.batch}; smaller sets repeated), once per seed "
        f"({', '.join(map(str, s.seeds))}: initialisation and data order), and is measured "
        f"on {s.heldout} held-out real images per group (onnxruntime + pycocotools). Values: "
        "mean ± standard deviation over seeds (overall: mean over groups, pooled seed sd). "
        "Gap closed = (row − a) / (d − a) on mAP50-95; 1.0 matches 90 more labelled photos."
        + (f" Generators fine-tuned from `{s.models}`." if s.models else ""), "",
    ]
    # Finished runs are reused, so the wall time of this call says little: the runs' own.
    trained = sum(r["seconds"] for runs in results.values() for rs in runs.values() for r in rs)
    tail = ["", f"Detector trainings: {trained / 60:.0f} min in all (one thread each), on "
            f"{'CUDA' if _cuda() else f'CPU ({os.cpu_count()} cores)'}; this report's call "
            f"took {seconds / 60:.0f} min."]
    return "\n".join(head + lines + [""] + verdict + per_group + tail) + "\n"


def chart(summary: dict[str, Any], s: Settings, ceiling: int, out: Path) -> None:
    """Bars of mAP50-95 per group and row with the seeds' standard deviation as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(summary["groups"]) + ["all"]
    rows = [r for r in s.rows if r in summary["overall"]]
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(groups), 4.2))
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        values = [summary["groups"][g].get(row) for g in groups[:-1]] + [summary["overall"][row]]
        x = [j + i * width for j in range(len(groups))]
        means = [v["mAP50_95"][0] if v else 0 for v in values]
        sds = [v["mAP50_95"][1] if v else 0 for v in values]
        ax.bar(x, means, width, yerr=sds, capsize=2, label=row_title(row, s, ceiling))
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(groups))], groups)
    ax.set_ylabel("mAP50-95 on held-out real images")
    ax.set_title(f"Downstream detector, {s.scene} {s.size[0]}×{s.size[1]}, "
                 f"{len(s.seeds)} seeds")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------- main


def run(s: Settings, work: Path, out: Path, jobs: int) -> dict[str, Any]:
    """Prepare every group's data, train every (group, row, seed) not yet finished, report."""
    from training.ultralytics_setup import import_ultralytics

    import_ultralytics()  # configures Ultralytics' offline settings, inherited by the workers
    recipes = [r for r in RECIPES if f"+{r}" in s.rows or f"{r}-only" in s.rows]
    if recipes and not s.models:
        raise FileNotFoundError(HOW_TO_GET_MODELS)
    started = time.monotonic()
    groups: dict[str, GroupData] = {}
    if s.custom:
        photos, more, test = (Path(p) for p in s.custom)
        data = custom_group(photos, more, test, work / "custom")
        groups[data.name] = data
    else:
        for g in s.groups:
            data = built_in_group(s, g, work / f"g{g}")
            groups[data.name] = data
    for data in groups.values():
        if "+copy-paste" in s.rows:
            add_copy_paste(data, s.n, work / data.name)
    first = next(iter(groups.values()))
    ceiling = len(image_files(first.ceiling / "images"))
    imgsz = s.imgsz or DETECTOR.imgsz_for(min(first_image_side(first.photos / "images"),
                                               MAX_IMGSZ))
    key = s.run_key(imgsz)

    results: dict[str, dict[str, list[dict]]] = {g: {} for g in groups}
    pending: dict[Future, tuple[str, str]] = {}
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:

        def submit(group: str, row: str) -> None:
            data = groups[group]
            for seed in s.seeds:
                run_dir = work / group / "runs" / f"{row.strip('+')}-s{seed}"
                done = finished(run_dir, key)
                if done is not None:
                    results[group].setdefault(row, []).append(done)
                    continue
                parts = [str(p) for p in row_parts(row, data)]
                future = pool.submit(train_and_measure, parts, str(data.test), seed, imgsz, key,
                                     str(run_dir))
                pending[future] = (group, row)

        # The recipes' fine-tunes go first: the rows that need their images wait for them.
        for group, data in groups.items():
            for recipe in recipes:
                future = pool.submit(add_recipe, recipe, data, s.n, Path(s.models),
                                     work / group, s.finetune_iterations)
                pending[future] = (group, f"recipe:{recipe}")
        for group in groups:
            for row in s.rows:
                if row in ("real", "ceiling", "+copy-paste"):
                    submit(group, row)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                group, row = pending.pop(future)
                result = future.result()
                if row.startswith("recipe:"):
                    recipe = row.removeprefix("recipe:")
                    groups[group].added[recipe] = work / group / recipe
                    groups[group].notes[recipe] = result
                    print(f"{group}: {recipe} images ready ({result})", flush=True)
                    for r in (f"+{recipe}", f"{recipe}-only"):
                        if r in s.rows:
                            submit(group, r)
                    continue
                results[group].setdefault(row, []).append(result)
                print(f"{group} {row} seed {result['seed']}: mAP50-95 "
                      f"{result['mAP50_95']:.3f}, mAP50 {result['mAP50']:.3f} "
                      f"({result['seconds']:.0f} s; {len(pending)} runs left)", flush=True)
    summary = summarise(results, s)
    seconds = time.monotonic() - started
    notes = {g: d.notes for g, d in groups.items()}
    text = report(summary, results, s, notes, ceiling, imgsz, seconds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    chart(summary, s, ceiling, out.with_suffix(".png"))
    (out.with_suffix(".json")).write_text(json.dumps(
        {"settings": asdict(s), "summary": summary, "runs": results}, indent=1, default=str))
    print(text)
    print(f"wrote {out}, {out.with_suffix('.png')} ({seconds / 60:.1f} min)")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="models dir with _base and _labeller "
                        "(from `make demo`), for the generator rows")
    parser.add_argument("--rows", nargs="+", choices=ROWS, help=f"default: all ({' '.join(ROWS)})")
    parser.add_argument("--groups", nargs="+", type=int, help="built-in cluttered groups")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--imgsz", type=int, help="detector input side (default: the images')")
    parser.add_argument("--photos", type=Path, help="your 10 photos (YOLO folder)")
    parser.add_argument("--more-real", type=Path, help="more real photos for the ceiling")
    parser.add_argument("--test", type=Path, help="held-out real photos to measure on")
    parser.add_argument("--quick", action="store_true", help="one group, one seed, 2 epochs")
    parser.add_argument("--jobs", type=int, default=2, help="training processes side by side")
    parser.add_argument("--work", type=Path, default=Path("out/downstream"),
                        help="work folder; finished runs in it are reused")
    parser.add_argument("--out", type=Path, help="markdown table (chart and JSON beside it)")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else Settings()
    if args.models is None and args.rows is None:  # no generator to fine-tune: the rest
        s = replace(s, rows=tuple(r for r in ROWS if not any(x in r for x in RECIPES)))
    s = replace(s, models=str(args.models) if args.models else None,
                **{k: tuple(v) if isinstance(v, list) else v for k, v in
                   (("rows", args.rows), ("groups", args.groups), ("seeds", args.seeds),
                    ("epochs", args.epochs), ("imgsz", args.imgsz)) if v is not None})
    custom = (args.photos, args.more_real, args.test)
    if any(custom):
        if not all(custom):
            sys.exit("error: --photos, --more-real and --test go together")
        s = replace(s, custom=tuple(str(p) for p in custom), groups=(), imgsz=args.imgsz)
    out = args.out or RESULTS / ("downstream_quick.md" if args.quick else "downstream.md")
    try:
        run(s, args.work, out, args.jobs)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
