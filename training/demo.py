"""The end-to-end demo behind `make demo`: corpus -> pretrain -> labeller -> fine-tune -> serve.

Each step reuses what an earlier run left in the output folder (the corpus, finished runs, a
published labeller), so running it again is fast; a fine-tune publishes a new version each time.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
import numpy as np
from PIL import Image

from service.core.cards import DEFAULT_REFINE, LabellerCard
from service.core.ports import free_port
from service.core.repository import BASE, LABELLER, ModelRepository
from service.core.yolo import read_names, write_data_yaml


@dataclass(frozen=True)
class DemoConfig:
    size: int = 64  # corpus image side; the `demo` profile's resolution
    pretrain_groups: int = 12  # product groups the base and the labeller learn from
    per_group: int = 60  # arrangements per group
    # A five-product group neither the base nor the labeller ever saw (the gan recipe makes
    # no green sample of it: bench/results/finetune_ablation.md), photographed at 256 px.
    sku_group: int = 12
    sku_size: int = 256
    sku_photos: int = 10  # the "ten photos" a new SKU arrives with
    sku_heldout: int = 40  # other real arrangements of the SKU, for evaluation
    pretrain_iterations: int = 1500
    # The base refiner and the SKU's refiner steps; 0 and DEFAULT_REFINE: the refiner did not
    # win downstream, so the demo, like a fine-tune, serves plain composites.
    refiner_pretrain_steps: int = 0
    refine: bool = DEFAULT_REFINE
    finetune_iterations: int = 300
    labeller_model: str = "yolov5n.yaml"  # yolov5x.yaml in production; n fits the CPU budget
    labeller_epochs: int = 30  # small-images recipe (imgsz 128, hue jitter): ~3-4 min, 2 CPUs
    labeller_heldout_groups: int = 4  # new product groups (the SKU's among them) for its card
    generate_n: int = 64  # raw samples judged for the report and the contact sheet
    select_n: int = 16  # selected (green) images written as a labelled dataset
    sku: str = "demo-sku"
    seed: int = 0


def step(message: str) -> None:
    click.secho(f"==> {message}", fg="cyan", bold=True)


def contact_sheet(paths: list[Path], out: Path, columns: int = 8) -> Path:
    """Tile images into one PNG you can open."""
    images = [Image.open(p).convert("RGB") for p in paths]
    w, h = images[0].size
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (w + 2), rows * (h + 2)), "white")
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * (w + 2), (i // columns) * (h + 2)))
    sheet.save(out)
    return out


def compose_sheet(photos: Path, models: Path, sku: str, out: Path, n: int = 8,
                  size: int = 256, seed: int = 0) -> Path:
    """Rows side by side: the SKU's photos, composites of their products, and, when the
    version has a refiner, the same composites refined (what /generate selects from)."""
    from service.core.compose_session import ComposeSession
    from service.core.datasets import image_files, read_image
    from service.core.seeds import image_seeds

    session = ComposeSession.from_folder(ModelRepository(models).resolve(sku).path)
    composites, masks, _ = session.compose(image_seeds(seed, 0, n), size)
    refined = list(session.refiner.refine(composites, masks)) if session.refiner else []
    real = [np.asarray(Image.fromarray(read_image(f)).resize(composites.shape[2:0:-1]))
            for f in image_files(photos)[:n]]
    tiles = [*real, *([None] * (n - len(real))), *composites, *refined]
    h, w = composites.shape[1:3]
    sheet = Image.new("RGB", (n * (w + 4), -(-len(tiles) // n) * (h + 4)), "white")
    for i, tile in enumerate(tiles):
        if tile is not None:
            sheet.paste(Image.fromarray(tile), ((i % n) * (w + 4), (i // n) * (h + 4)))
    sheet.save(out)
    return out


def call_service(models: Path, out: Path, sku: str, n: int) -> dict:
    """Start `boxgen serve`, wait until ready, POST /generate, stop it; return the response."""
    port = free_port()
    log = open(out / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "serve", "--models", str(models),
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise click.ClickException(f"server exited; see {out / 'serve.log'}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise click.ClickException(f"server not ready in 120 s; see {out / 'serve.log'}")
            time.sleep(0.5)
        response = httpx.post(
            f"{url}/generate", json={"sku": sku, "n": n, "seed": 1, "format": "json"}, timeout=300
        )
        response.raise_for_status()
        return response.json()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        log.close()


def run_demo(out: Path, cfg: DemoConfig = DemoConfig()) -> None:
    """The whole product on the built-in corpus, one named step after another; each step
    skips what an earlier run of the same `out` already finished."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    models = out / "models"

    step(f"1/6 built-in corpus: {cfg.pretrain_groups} groups x {cfg.per_group} bins")
    corpus, photos, heldout = render_data(out, cfg)
    step(f"2/6 pretrain the WGAN-GP base ({cfg.pretrain_iterations} iterations, demo profile)"
         + (f" and the compose refiner ({cfg.refiner_pretrain_steps} steps)"
            if cfg.refiner_pretrain_steps else ""))
    pretrain_base(corpus, out, models, cfg)
    step(f"3/6 train the labeller ({cfg.labeller_model}, {cfg.labeller_epochs} epochs)")
    train_demo_labeller(corpus, out, models, cfg)
    step(f"4/6 compose fine-tune on {cfg.sku_photos} photos of a product group the base never "
         "saw")
    finetune_sku(photos, out, models, cfg)
    step(f"5/6 judge {cfg.generate_n} raw samples like the thesis' Table 4.1, then select")
    sheet = judge_and_select(photos, heldout, out, models, cfg)
    step("6/6 serve the model and call POST /generate")
    serve_and_generate(out, models, cfg)
    click.secho(f"demo finished in {time.monotonic() - started:.0f} s; open {sheet}", fg="green")


def render_data(out: Path, cfg: DemoConfig) -> tuple[Path, Path, Path]:
    """The pretraining corpus, and the SKU's photos and held-out arrangements (YOLO folders)."""
    from training.render import write_corpus

    corpus, photos, heldout = out / "corpus", out / "sku-photos", out / "sku-heldout"
    size = (cfg.size, cfg.size)
    if not (corpus / "data.yaml").is_file():
        write_corpus(corpus, cfg.pretrain_groups, cfg.per_group, size, cfg.seed, progress=True)
    if not (photos / "data.yaml").is_file():
        sku = out / "sku-all"
        n = cfg.sku_photos + cfg.sku_heldout
        write_corpus(sku, 1, n, (cfg.sku_size, cfg.sku_size), cfg.seed,
                     first_group=cfg.sku_group)
        names = sorted(p.name for p in (sku / "images").iterdir())
        for folder, chosen in (
            (photos, names[: cfg.sku_photos]),
            (heldout, names[cfg.sku_photos :]),
        ):
            for sub in ("images", "labels"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            for name in chosen:
                stem = Path(name).stem
                shutil.copy(sku / "images" / name, folder / "images" / name)
                shutil.copy(sku / "labels" / f"{stem}.txt", folder / "labels" / f"{stem}.txt")
            # `path` is the folder itself: the rendered one goes away below.
            write_data_yaml(folder, read_names(sku), path=folder)
        shutil.rmtree(sku)
    return corpus, photos, heldout


def pretrain_base(corpus: Path, out: Path, models: Path, cfg: DemoConfig) -> None:
    """Pretrain the WGAN-GP base and the compose refiner on the corpus; publish them as
    `_base`."""
    from training.compose_recipe import pretrain_refiner
    from training.config import profile
    from training.pretrain import pretrain, publish_pretrained
    from training.refiner import refiner_profile

    if not ModelRepository(models).versions(BASE):
        pcfg = profile("demo").replace(iterations=cfg.pretrain_iterations, seed=cfg.seed)
        pretrain(pcfg, corpus, out / "runs" / "base")
        refiner = pretrain_refiner(
            corpus, out / "runs" / "base-refiner",
            refiner_profile("default").replace(steps=cfg.refiner_pretrain_steps)
        ) if cfg.refiner_pretrain_steps else None
        publish_pretrained(out / "runs" / "base", models, refiner)


def train_demo_labeller(corpus: Path, out: Path, models: Path, cfg: DemoConfig) -> None:
    """Train the labeller on the corpus, measured on product groups it never saw."""
    from training.labeller import train_labeller
    from training.render import write_corpus

    if ModelRepository(models).versions(LABELLER):
        return
    # Groups never trained on (new products, the SKU's among them): the card's held-out mAP.
    labeller_heldout = out / "labeller-heldout"
    if not (labeller_heldout / "data.yaml").is_file():
        write_corpus(labeller_heldout, cfg.labeller_heldout_groups, cfg.per_group,
                     (cfg.size, cfg.size), cfg.seed, first_group=cfg.pretrain_groups)
    labeller = train_labeller(corpus, models, cfg.labeller_model, cfg.labeller_epochs,
                              heldout=labeller_heldout, recipe="auto")
    metrics = labeller.read_card(LabellerCard).metrics
    click.echo(f"labeller on new products: mAP50 {metrics['heldout_mAP50']:.3f}, "
               f"mAP50-95 {metrics['heldout_mAP50_95']:.3f}")


def finetune_sku(photos: Path, out: Path, models: Path, cfg: DemoConfig) -> None:
    """Fine-tune the SKU on its ten labelled photos by compose and publish its new version."""
    from training.finetune import finetune

    version = finetune(cfg.sku, photos, models,
                       out=out / "runs" / f"finetune-{int(time.time())}",
                       overrides={"iterations": cfg.finetune_iterations}, recipe="compose",
                       refine=cfg.refine)
    click.echo(f"published {cfg.sku} version {version.version}")


def judge_and_select(photos: Path, heldout: Path, out: Path, models: Path,
                     cfg: DemoConfig) -> Path:
    """Judge raw samples into a report and a contact sheet, then write selected ones; returns
    the contact sheet."""
    from service.core.pipeline import generate_dataset
    from training.evaluate import evaluate_folder

    samples, generated = out / "samples", out / "generated"
    for folder in (samples, generated):
        shutil.rmtree(folder, ignore_errors=True)
    generate_dataset(cfg.sku, cfg.generate_n, samples, models, seed=cfg.seed, select="none")
    report = evaluate_folder(
        samples / "images", photos / "images", models, out / "report", real_dir=heldout / "images"
    )
    click.echo(
        ", ".join(f"{k} {v:.0%}" for k, v in report["categories"].items())
        + f"; report: {out / 'report' / 'report.html'}"
    )
    contact_sheet(sorted((samples / "images").iterdir()), out / "contact_sheet.png")
    contact_sheet(sorted((photos / "images").iterdir()), out / "sku_photos.png")
    sheet = compose_sheet(photos / "images", models, cfg.sku, out / "compose_sheet.png")
    result = generate_dataset(cfg.sku, cfg.select_n, generated, models, seed=cfg.seed)
    click.echo(
        f"selected {len(result.images)} green images from {result.tried} samples into "
        f"{generated}; the photos beside composites of their products: {sheet}"
    )
    return sheet


def serve_and_generate(out: Path, models: Path, cfg: DemoConfig) -> None:
    """Start the server, POST /generate, and keep what it answered under `out`."""
    response = call_service(models, out, cfg.sku, 8)
    served = out / "served"
    served.mkdir(exist_ok=True)
    for i, item in enumerate(response["images"]):
        (served / f"{i:02d}.png").write_bytes(base64.b64decode(item["png_base64"]))
    summary = {k: v for k, v in response.items() if k != "images"}
    (out / "generate_response.json").write_text(json.dumps(summary, indent=2))
    boxes = [len(item.get("boxes", [])) for item in response["images"]]
    click.echo(
        f"/generate returned {len(response['images'])} images from {cfg.sku} version "
        f"{response.get('version')} ({response['passed_fraction']:.0%} of {response['tried']} "
        f"samples passed), boxes per image {np.mean(boxes) if boxes else 0:.1f}"
        + (f"; {response['message']}" if response.get("message") else "")
    )
