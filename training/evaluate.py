"""Evaluation reports: the thesis' four categories, novelty, distribution metrics, contact sheet.

`evaluate_folder` judges any folder of images (boxgen's output or anyone else's) against the
training images they should not copy; `evaluate_generator` samples a generator and judges it,
for the fine-tune's model card and its snapshot choice (`selection_score`). Both label every
image with the repository's labeller and score it with `service.core.selector.Selector`.

A report (`report.json`) holds `categories` (fractions green, yellow, white, red), `scores`
(one per image), `selector` (thresholds and how they were calibrated), `metrics` (novelty
quantiles; KID, precision/recall/density/coverage against held-out real images when given;
FID when Inception weights are given) and `selection` (how many pass `select`).
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.core.datasets import first_image_side
from service.core.gan_session import GeneratorSession, to_uint8
from service.core.labeller_session import LabellerSession
from service.core.repository import ModelNotFound
from service.core.selector import CATEGORIES, ImageScore, Selector, category_fractions, passes
from training.data import load_images
from training.metrics import coverage, fid, kid, novelty
from training.metrics.features import FEATURES_VERSION, image_features

COLOURS = {"green": "#2e7d32", "yellow": "#f9a825", "white": "#e0e0e0", "red": "#c62828"}
THUMB = 128  # contact-sheet tile side in pixels


def selection_score(report: dict[str, Any]) -> float:
    """One number to pick snapshots by (higher is better): green + yellow / 2.

    Copies and broken images count nothing; a borderline new image counts half a good one.
    Break ties with the report's KID (lower is better) where present.
    """
    c = report["categories"]
    return float(c["green"] + 0.5 * c["yellow"])


def load_folder(path: str | Path, resolution: int | None = None) -> tuple[np.ndarray, list[Path]]:
    """Every image in a plain or YOLO-layout folder as uint8 [N, R, R, 3] (stretched), with paths.

    `resolution` defaults to the first image's larger side.
    """
    path = Path(path)
    if resolution is None:
        folder = path / "images" if (path / "images").is_dir() else path
        resolution = first_image_side(folder)
    data = load_images(path, resolution)
    return to_uint8(data.images.numpy()), list(data.paths)


def _labeller(models: str | Path, version: int | None = None) -> LabellerSession:
    try:
        return LabellerSession.from_repository(models, version)
    except ModelNotFound as e:
        raise FileNotFoundError(str(e)) from None


def _distribution(
    images: np.ndarray, real_images: np.ndarray | None, inception: str | Path | None
) -> dict[str, Any]:
    """KID, precision/recall/density/coverage (and FID) against real images, if given."""
    if real_images is None or len(real_images) < 2 or len(images) < 2:
        return {}
    real_f, fake_f = image_features(real_images), image_features(images)
    out: dict[str, Any] = {
        "features": FEATURES_VERSION,
        "real_images": len(real_images),
        **kid.compute(real_f, fake_f),
        **coverage.compute(real_f, fake_f),
    }
    if inception is not None:
        out.update(fid.compute(real_images, images, inception))
    return out


def build_report(
    images: np.ndarray,
    selector: Selector,
    labeller: LabellerSession | Callable[[np.ndarray], list[Any]],
    real_images: np.ndarray | None = None,
    select: str = "green",
    inception: str | Path | None = None,
    names: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[ImageScore]]:
    """Label, score and measure `images` (uint8 NHWC); return the report and the scores."""
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    label = labeller.label if isinstance(labeller, LabellerSession) else labeller
    detections = label(images)
    scores = selector.score(images, detections)
    passed = [s for s in scores if passes(s, select)]
    metrics = {
        **novelty.compute([s.novelty for s in scores]),
        **novelty.nearest_spread([s.nearest for s in scores], len(selector.reference)),
        "quality_mean": float(np.mean([s.quality for s in scores])),
        **_distribution(images, real_images, inception),
    }
    per_image = [
        {**s.to_dict(), **({"file": str(names[i])} if names is not None else {})}
        for i, s in enumerate(scores)
    ]
    report = {
        "images": len(images),
        "categories": category_fractions(scores),
        "selection": {
            "select": select,
            "passed": len(passed),
            "passed_fraction": len(passed) / len(scores),
        },
        "metrics": metrics,
        "selector": selector.describe(),
        "scores": per_image,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    report["selection_score"] = selection_score(report)
    return report, scores


def fit_selector(
    train_images: np.ndarray, labeller: LabellerSession | Callable[[np.ndarray], list[Any]]
) -> Selector:
    """A selector calibrated on the training images and the labeller's view of them."""
    label = labeller.label if isinstance(labeller, LabellerSession) else labeller
    detections = label(train_images)
    if not any(len(d) for d in detections):
        # The labeller sees none of this product: quality cannot be calibrated, but novelty
        # still can. The card's selector section then has no `quality` entry, which says so.
        return Selector.fit(train_images, None)
    return Selector.fit(train_images, detections)


def evaluate_folder(
    images_dir: str | Path,
    train_dir: str | Path,
    models_dir: str | Path,
    out_dir: str | Path,
    real_dir: str | Path | None = None,
    select: str = "green",
    inception: str | Path | None = None,
    labeller_version: int | None = None,
) -> dict[str, Any]:
    """Judge the images in `images_dir` against the training images in `train_dir`.

    Training (and held-out real) images are stretched to the evaluated images' size, as the
    fine-tune does. Writes `out_dir/report.json` and `out_dir/report.html`; returns the report.
    """
    images, files = load_folder(images_dir)
    side = images.shape[1]
    train, train_files = load_folder(train_dir, side)
    real = load_folder(real_dir, side)[0] if real_dir is not None else None
    labeller = _labeller(models_dir, labeller_version)
    selector = fit_selector(train, labeller)
    report, scores = build_report(
        images, selector, labeller, real, select, inception, names=[f.name for f in files]
    )
    report["inputs"] = {
        "images": str(Path(images_dir).resolve()),
        "train": str(Path(train_dir).resolve()),
        "real": str(Path(real_dir).resolve()) if real_dir else None,
        "train_files": [f.name for f in train_files],
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    write_html(report, images, train, out, [f.name for f in files])
    return report


def evaluate_generator(
    generator: str | Path | Callable[[int, int], np.ndarray],
    selector: Selector,
    labeller: LabellerSession | Callable[[np.ndarray], list[Any]],
    n: int = 300,
    real_images: np.ndarray | None = None,
    seed: int = 0,
    select: str = "green",
    inception: str | Path | None = None,
) -> dict[str, Any]:
    """Sample `n` images (fixed `seed`) from an ONNX generator or `generate(n, seed)` and judge.

    For the fine-tune: the report (without per-image scores, to keep cards small) goes into the
    model card, and `selection_score(report)` ranks snapshots.
    """
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    generate = (
        GeneratorSession(generator).sample if isinstance(generator, str | Path) else generator
    )
    images = np.asarray(generate(n, seed))
    report, _ = build_report(images, selector, labeller, real_images, select, inception)
    del report["scores"]
    report["seed"] = seed
    return report


# ----------------------------------------------------------------------------- HTML


def _thumb(image: np.ndarray, path: Path) -> str:
    Image.fromarray(image).resize((THUMB, THUMB), Image.Resampling.NEAREST).save(path)
    return f"{path.parent.name}/{path.name}"


def _bars(values: dict[str, float], colours: dict[str, str] | None = None) -> str:
    rows = []
    for key, value in values.items():
        colour = (colours or {}).get(key, "#5c6bc0")
        rows.append(
            f'<tr><td>{html.escape(str(key))}</td><td><div class="bar" style="width:'
            f'{max(1.0, 300 * value):.0f}px;background:{colour}"></div></td>'
            f"<td>{value:.1%}</td></tr>"
        )
    return "<table>" + "".join(rows) + "</table>"


def _histogram(values: Sequence[float], edges: Sequence[float]) -> dict[str, float]:
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1] - 1e-9), bins=edges)
    total = max(len(values), 1)
    return {
        f"{a:g}-{b:g}": c / total for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)
    }


def write_html(
    report: dict[str, Any], images: np.ndarray, train: np.ndarray, out: Path, names: Sequence[str]
) -> Path:
    """`out/report.html`: category bars, novelty histogram, metrics, and the contact sheet."""
    thumbs = out / "thumbs"
    thumbs.mkdir(exist_ok=True)
    train_src = {}
    tiles = []
    for i, score in enumerate(report["scores"]):
        near = score["nearest"]
        if near not in train_src:
            train_src[near] = _thumb(train[near], thumbs / f"train_{near:04d}.png")
        src = _thumb(images[i], thumbs / f"gen_{i:05d}.png")
        caption = (
            f"{html.escape(names[i])}<br>{score['category']} · novelty "
            f"{score['novelty']:.2f} · quality {score['quality']:.2f}<br>"
            f"{html.escape(score['reason'])}"
        )
        tiles.append(
            f'<figure class="tile" style="border-color:{COLOURS[score["category"]]}">'
            f'<img src="{src}" title="generated"><img src="{train_src[near]}" '
            f'title="nearest training image {near}" class="near">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    metrics = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>"
        for k, v in report["metrics"].items()
        if isinstance(v, int | float)
    )
    hist = _histogram([s["novelty"] for s in report["scores"]], [0, 0.5, 1, 1.5, 2, 3, 5])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>boxgen evaluation</title>
<style>body{{font-family:sans-serif;margin:20px}} .bar{{height:14px}}
td{{padding:2px 8px}} .tile{{display:inline-block;border:6px solid;margin:4px;padding:4px;
width:{2 * THUMB + 12}px;font-size:11px;vertical-align:top;background:#fafafa}}
.tile img{{width:{THUMB}px;height:{THUMB}px;image-rendering:pixelated}}
.near{{margin-left:4px;opacity:.85}}</style></head><body>
<h1>boxgen evaluation: {report["images"]} images</h1>
<h2>Categories (thesis Table 4.1)</h2>{_bars(report["categories"], COLOURS)}
<p>Selection <b>{report["selection"]["select"]}</b>: {report["selection"]["passed"]} pass
({report["selection"]["passed_fraction"]:.1%}).</p>
<h2>Novelty (distance to nearest training image / copy threshold; &lt; 1 is a copy)</h2>
{_bars(hist)}
<h2>Metrics</h2><table>{metrics}</table>
<h2>Thresholds</h2><pre>{html.escape(json.dumps(report["selector"], indent=1))}</pre>
<h2>Contact sheet</h2><p>Each sample (left) framed in its category's colour
({", ".join(CATEGORIES)}), its nearest training image beside it.</p>
{"".join(tiles)}
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
