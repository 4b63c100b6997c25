"""How the judge sees compose's raw samples, beside how it sees real photos of the same bins.

    python bench/compose_quality.py --models out/demo/models [--groups 13 12 30 31 32]

For each product group (tidy groups hold 1-6 products, cluttered 3-8) it renders ten photos
and `--real` held-out real bins at 256 px, fine-tunes compose on the photos exactly as
`boxgen finetune` does (the models' base refiner and labeller), then judges `--samples` raw
samples (select=none, seed 0, 256 px) and the held-out real bins with the SKU's own selector.
The real bins are the reference: a judge built on a weak labeller calls some real bins
yellow or white too. Then the same samples again with distractors: up to two products of the
next group in the list per image (`/generate`'s `distractors`), judged by the same selector.
Writes `bench/results/compose_quality.{md,json}` and, per group, a contact sheet of photos,
composites and refined images (`compose_sheet_g<N>.jpg`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from service.core.datasets import image_files, read_image
from service.core.pipeline import ModelCache, Pipeline
from service.core.repository import BASE, LABELLER, ModelRepository
from service.core.selector import category_fractions
from service.core.yolo import pixel_boxes, read_rows

RESULTS = Path(__file__).parent / "results"
SCENES = {12: "tidy", 13: "tidy"}  # other groups: cluttered


def judge_group(group: int, models: Path, work: Path, samples: int, real: int,
                size: int) -> dict:
    from training.compose_recipe import judge_samples
    from training.demo import compose_sheet
    from training.finetune import finetune
    from training.render import make_group, write_corpus

    scene = SCENES.get(group, "cluttered")
    corpus = work / f"g{group}" / "corpus"
    if not (corpus / "data.yaml").is_file():
        write_corpus(corpus, 1, 10 + real, (size, size), first_group=group, scene=scene)
    files = image_files(corpus / "images")
    photos = work / f"g{group}" / "photos"
    if not photos.is_dir():
        for sub in ("images", "labels"):
            (photos / sub).mkdir(parents=True)
        for f in files[:10]:
            shutil.copy(f, photos / "images" / f.name)
            shutil.copy(corpus / "labels" / f"{f.stem}.txt", photos / "labels")
        shutil.copy(corpus / "data.yaml", photos / "data.yaml")
    sku = f"quality-g{group}"
    started = time.monotonic()
    if not ModelRepository(models).versions(sku):
        finetune(sku, photos, models, out=work / f"g{group}" / "run", progress=False)
    seconds = time.monotonic() - started
    cache = ModelCache(ModelRepository(models))
    entry = cache.repository.resolve(sku)
    session, selector, labeller = cache.generator(entry), cache.selector(entry), \
        cache.load_labeller()
    scores = judge_samples(session, selector, labeller, samples, size)
    held = [read_image(f) for f in files[10:]]
    truth = [pixel_boxes(read_rows(corpus / "labels" / f"{f.stem}.txt"), im.shape[:2])
             for f, im in zip(files[10:], held, strict=True)]
    real_scores = selector.score(held, labeller.label(held), truth)
    sheet = compose_sheet(photos / "images", models, sku, work / f"sheet-g{group}.png")
    out = RESULTS / f"compose_sheet_g{group}.jpg"
    Image.open(sheet).convert("RGB").save(out, quality=85)
    return {"group": group, "sku": sku, "scene": scene,
            "products": len(make_group(0, group, scene)),
            "finetune_seconds": round(seconds, 1),
            "compose": category_fractions(scores), "real": category_fractions(real_scores),
            "fidelity_min": float(np.min([s.fidelity for s in scores])),
            "sheet": out.name}


def judge_with_distractors(models: Path, sku: str, other: str, samples: int, size: int
                           ) -> dict[str, float]:
    """`sku`'s raw samples with up to two of `other`'s products each, judged by its selector."""
    from training.compose_recipe import judge_samples

    cache = ModelCache(ModelRepository(models))
    entry = cache.repository.resolve(sku)
    session = cache.generator(entry)
    distractors, _ = Pipeline(cache).distractors(sku, session, [other], most=2)
    scores = judge_samples(session, cache.selector(entry), cache.load_labeller(), samples,
                           size, distractors=distractors)
    return category_fractions(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True,
                        help="a repository with _base and _labeller (from `make demo`)")
    parser.add_argument("--groups", type=int, nargs="+", default=[13, 12, 30, 31, 32])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--real", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path("out/compose_quality"))
    args = parser.parse_args()
    models = args.work / "models"
    if not models.is_dir():
        for name in (BASE, LABELLER):
            shutil.copytree(args.models / name, models / name)
    rows = [judge_group(g, models, args.work, args.samples, args.real, args.size)
            for g in args.groups]
    for row, other in zip(rows, rows[1:] + rows[:1], strict=True):
        row["distractors_from"] = other["group"]
        row["with_distractors"] = judge_with_distractors(models, row["sku"], other["sku"],
                                                         args.samples, args.size)
    lines = ["# compose: raw samples judged, beside real bins of the same groups", "",
             f"{args.samples} raw samples (select=none, seed 0) and {args.real} held-out real "
             f"bins per group, {args.size} px, judged by the SKU's own selector "
             "(`bench/compose_quality.py`).", "",
             "| group | scene | products | compose green | yellow | white | red | "
             "real green | yellow | white | red | fine-tune s | with distractors of | green | "
             "white |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | "
             "--- | --- |"]
    for r in rows:
        c, q, d = r["compose"], r["real"], r["with_distractors"]
        lines.append(f"| {r['group']} | {r['scene']} | {r['products']} | "
                     + " | ".join(f"{c[k]:.0%}" for k in ("green", "yellow", "white", "red"))
                     + " | " + " | ".join(f"{q[k]:.0%}" for k in ("green", "yellow", "white",
                                                                 "red"))
                     + f" | {r['finetune_seconds']:.0f} | group {r['distractors_from']} | "
                     f"{d['green']:.0%} | {d['white']:.0%} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "compose_quality.md").write_text(text)
    (RESULTS / "compose_quality.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
