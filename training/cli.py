"""The `boxgen` command line: parses arguments, then calls library code."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from service.core.cards import (
    DEFAULT_RECIPE,
    DEFAULT_REFINE,
    GENERATOR_RECIPES,
    GeneratorCard,
    LabellerCard,
)
from service.core.compose import MAX_DISTRACTORS, MAX_SIZE
from service.core.devices import WORKERS_ENV
from service.core.repository import ModelNotFound, RepositoryFull
from service.core.selector import SELECT_MODES
from training.render import SCENES

EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
DIR = click.Path(file_okay=False, path_type=Path)
MODELS_OPTION = click.option(
    "--models",
    type=DIR,
    default=Path("models"),
    show_default=True,
    envvar="BOXGEN_MODELS",
    help="Model repository folder.",
)

# Errors a user can cause: printed as one line, exit status 1, never a traceback.
# ConnectionError: Ultralytics reaching for a download, which boxgen blocks (it runs offline).
# RepositoryFull: a full volume at publish (the job runner reports that line as the job's error).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, ModelNotFound, ConnectionError,
               RepositoryFull)


class BoxgenGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            message = str(exc).splitlines()[0] if str(exc) else repr(exc)
            raise click.ClickException(message) from None


def build_config(profile_name: str, iterations: int | None, overrides: tuple[str, ...]):
    from training.config import apply_overrides, profile

    cfg = apply_overrides(profile(profile_name), list(overrides))
    return cfg.replace(iterations=iterations) if iterations is not None else cfg


@click.group(cls=BoxgenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="boxgen")
def cli() -> None:
    """boxgen: few-shot bin-image generation with YOLO labels for picking robots."""


@cli.command("demo-data")
@click.argument("out", type=DIR)
@click.option(
    "--groups",
    type=click.IntRange(1, 10_000),
    default=12,
    show_default=True,
    help="Product groups: each one fixed set of products.",
)
@click.option(
    "--per-group",
    type=click.IntRange(1, 100_000),
    default=60,
    show_default=True,
    help="Arrangements rendered per group.",
)
@click.option("--size", default="64x64", show_default=True, help="Image size WIDTHxHEIGHT.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--first-group",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Index of the first group; groups from another range are new product sets.",
)
@click.option(
    "--scene",
    type=click.Choice(SCENES),
    default="tidy",
    show_default=True,
    help="tidy: 1-6 products apart; cluttered: 3-8 products that touch and overlap "
    "(visible-part labels), varied lighting, some blur.",
)
def demo_data(
    out: Path, groups: int, per_group: int, size: str, seed: int, first_group: int, scene: str
):
    """Render the built-in corpus of bins (YOLO layout: images/, labels/, data.yaml)."""
    from training.render import parse_size, write_corpus

    path = write_corpus(
        out, groups, per_group, parse_size(size), seed, first_group, progress=True, scene=scene
    )
    click.echo(f"wrote {groups * per_group} images to {path}")


@cli.command()
@click.option("--data", type=EXISTING_DIR, required=True, help="YOLO-layout or image folder.")
@click.option("--out", type=DIR, required=True, help="Run folder (resumes if it has a checkpoint).")
@click.option(
    "--profile", "profile_name", default="demo", show_default=True, help="tiny | demo | thesis"
)
@click.option("--iterations", type=click.IntRange(1), help="Generator steps (profile default).")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config field, e.g. --set batch_size=16.",
)
@click.option("--models", type=DIR, help="Also publish the result as the fine-tune base here.")
@click.option(
    "--refiner-steps",
    type=click.IntRange(0),
    help="Steps of the compose recipe's base refiner, pretrained on the corpus (default: "
    "its profile's; 0: none, compose fine-tunes then start from the identity).",
)
def pretrain(
    data: Path,
    out: Path,
    profile_name: str,
    iterations: int | None,
    overrides: tuple[str, ...],
    models: Path | None,
    refiner_steps: int | None,
):
    """Pretrain the generator and critic, and the compose refiner, on a corpus of bin images."""
    from training.compose_recipe import pretrain_refiner
    from training.pretrain import pretrain as run_pretrain
    from training.pretrain import publish_pretrained
    from training.refiner import refiner_profile

    cfg = build_config(profile_name, iterations, overrides)
    run = run_pretrain(cfg, data, out)
    click.echo(f"pretrained {run.step} iterations in {out}")
    refiner = None
    if refiner_steps != 0:
        refiner_cfg = refiner_profile("default")
        if refiner_steps is not None:
            refiner_cfg = refiner_cfg.replace(steps=refiner_steps)
        refiner = pretrain_refiner(data, out / "refiner", refiner_cfg)
        click.echo(f"pretrained the refiner {refiner['step']} steps in {out / 'refiner'}")
    if models is not None:
        version = publish_pretrained(out, models, refiner)
        click.echo(f"published base {version.name}/{version.version} to {models}")


@cli.command()
@click.option(
    "--images",
    type=EXISTING_DIR,
    required=True,
    help="The SKU's photos (5 to 100, PNG or JPEG, any size; ten recommended).",
)
@click.option(
    "--labels",
    type=EXISTING_DIR,
    help="YOLO label files for the photos, paired by name (optional).",
)
@click.option("--sku", required=True, help="SKU name the model is published under.")
@MODELS_OPTION
@click.option(
    "--base",
    type=click.Path(exists=True, path_type=Path),
    help="Pretrained run folder or checkpoint (default: the repository's _base).",
)
@click.option("--iterations", type=click.IntRange(1), help="Generator steps (profile default).")
@click.option("--freeze-critic-blocks", type=click.IntRange(0), help="FreezeD: first k blocks.")
@click.option("--out", type=DIR, help="Run folder (resumes if it has a checkpoint).")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config field, e.g. --set augment=translation.",
)
@click.option(
    "--status-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write progress JSON here (used by the service's job runner).",
)
@click.option(
    "--recipe",
    type=click.Choice(GENERATOR_RECIPES),
    default=DEFAULT_RECIPE,
    show_default=True,
    help="compose: new arrangements of the photos' own products, refined by a per-SKU "
    "network; gan: the thesis' WGAN-GP fine-tune.",
)
@click.option(
    "--empty",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="compose: a photo of the empty bin (default: estimated from the photos).",
)
@click.option(
    "--refine/--no-refine",
    default=DEFAULT_REFINE,
    show_default=True,
    help="compose: train the refiner (--no-refine serves the plain composites).",
)
def finetune(
    images: Path,
    labels: Path | None,
    sku: str,
    models: Path,
    base: Path | None,
    iterations: int | None,
    freeze_critic_blocks: int | None,
    out: Path | None,
    overrides: tuple[str, ...],
    status_file: Path | None,
    recipe: str,
    empty: Path | None,
    refine: bool,
):
    """Make a new SKU's model from its photos (compose or gan), then publish it.

    --images takes a YOLO folder (its labels are used) or plain images (the labeller finds
    the products, for compose)."""
    from training.config import parse_overrides
    from training.finetune import finetune as run_finetune

    changes = parse_overrides(list(overrides))
    if iterations is not None:
        changes["iterations"] = iterations
    if freeze_critic_blocks is not None:
        changes["freeze_critic_blocks"] = freeze_critic_blocks
    version = run_finetune(
        sku, images, models, out=out, base=base, overrides=changes, status_file=status_file,
        labels=labels, recipe=recipe, empty=empty, refine=refine,
    )
    click.echo(f"published {sku} version {version.version} to {models}")


@cli.command()
@click.option("--run", "run_dir", type=EXISTING_DIR, required=True, help="Training run folder.")
@click.option("--sku", required=True)
@MODELS_OPTION
def export(run_dir: Path, sku: str, models: Path):
    """Export a run's generator to ONNX (parity-checked) and publish it as a new SKU version."""
    from training.checkpoint import latest_checkpoint
    from training.export import publish_generator

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise click.ClickException(f"run folder {run_dir} has no checkpoint")
    version = publish_generator(checkpoint, sku, models, card={"run": str(run_dir.resolve())})
    parity = version.read_card(GeneratorCard).onnx_parity_max_abs
    click.echo(f"published {sku} version {version.version} (parity max abs {parity:.1e})")


SELECT = click.Choice(SELECT_MODES)


@cli.command()
@click.option("--sku", required=True)
@click.option("-n", "n", type=click.IntRange(1, 100_000), default=16, show_default=True)
@click.option("--out", type=DIR, required=True)
@MODELS_OPTION
@click.option("--seed", type=int, help="Same seed, same images.")
@click.option("--version", type=click.IntRange(1), help="Pin a model version (default newest).")
@click.option(
    "--size",
    type=click.IntRange(16, MAX_SIZE),
    help="Long side in pixels (compose: default 256; gan: its own resolution only).",
)
@click.option(
    "--select",
    type=SELECT,
    default="green",
    show_default=True,
    help="green: only new, good images; yellow: also borderline; none: raw samples.",
)
@click.option(
    "--distractor",
    "distractors",
    multiple=True,
    help="Another compose SKU whose products may lie in the bin too, labelled with their own "
    "classes (repeat for several).",
)
@click.option(
    "--max-distractors",
    type=click.IntRange(0, MAX_DISTRACTORS),
    default=2,
    show_default=True,
    help="Each image holds 0 to this many distractors.",
)
def generate(
    sku: str, n: int, out: Path, models: Path, seed: int | None, version: int | None,
    size: int | None, select: str, distractors: tuple[str, ...], max_distractors: int,
):
    """Generate labelled images of a SKU (YOLO txt, COCO JSON, data.yaml) into OUT."""
    from service.core.pipeline import generate_dataset

    result = generate_dataset(sku, n, out, models, seed=seed, version=version, select=select,
                              size=size, distractors=distractors,
                              max_distractors=max_distractors)
    click.echo(
        f"wrote {len(result.images)} images of {sku} version {result.version} to {out} "
        f"({result.passed}/{result.tried} samples passed select={select})"
    )
    if result.message:
        click.secho(result.message, fg="yellow", err=True)


@cli.command("train-labeller")
@click.option(
    "--data",
    type=EXISTING_DIR,
    help="YOLO-layout corpus (default: render the built-in one, --size pixels, 12 groups x 60).",
)
@click.option(
    "--model",
    "model_cfg",
    default="yolov5x.yaml",
    show_default=True,
    help="Ultralytics model config; yolov5n.yaml for CPU demos and tests.",
)
@click.option("--epochs", type=click.IntRange(1), default=100, show_default=True)
@click.option(
    "--recipe",
    type=click.Choice(["auto", "small-images", "standard"]),
    default="auto",
    show_default=True,
    help="Training settings: small-images (bins <= 128 px: imgsz 2x the images, hue jitter, "
    "AdamW), standard (Ultralytics' defaults); auto picks by the images' size.",
)
@click.option(
    "--imgsz",
    type=click.IntRange(32),
    help="Training and labelling size (default: from the recipe; standard: 256).",
)
@click.option("--batch", type=click.IntRange(1), default=16, show_default=True)
@click.option(
    "--size",
    type=click.IntRange(32, 2048),
    default=256,
    show_default=True,
    help="Image side of the built-in corpus when --data is not given.",
)
@click.option(
    "--heldout",
    type=EXISTING_DIR,
    help="YOLO folder of product groups never trained on, for the card's mAP.",
)
@MODELS_OPTION
def train_labeller(
    data: Path | None,
    model_cfg: str,
    epochs: int,
    recipe: str,
    imgsz: int | None,
    batch: int,
    size: int,
    heldout: Path | None,
    models: Path,
):
    """Train the YOLO labeller from a model config (no downloads), export ONNX, publish it."""
    import tempfile

    from training.labeller import train_labeller as run
    from training.render import write_corpus

    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            data = write_corpus(Path(tmp) / "corpus", 12, 60, (size, size), progress=True)
        version = run(data, models, model_cfg, epochs, imgsz, batch=batch, heldout=heldout,
                      recipe=recipe)
    card = version.read_card(LabellerCard)
    figures = ", ".join(f"{k} {v:.3f}" for k, v in card.metrics.items())
    click.echo(
        f"published labeller version {version.version} (recipe {card.recipe}, "
        f"imgsz {card.imgsz}): {figures}"
    )


@cli.command()
@click.option("--images", type=EXISTING_DIR, required=True)
@click.option("--out", type=DIR, required=True)
@MODELS_OPTION
@click.option("--conf", type=click.FloatRange(0, 1), default=0.25, show_default=True)
def label(images: Path, out: Path, models: Path, conf: float):
    """Label any folder of images with the published labeller (YOLO txt, COCO JSON, data.yaml)."""
    from service.core.datasets import label_folder

    label_folder(images, out, models, conf=conf)
    click.echo(f"labelled {images} into {out}")


@cli.command()
@click.option("--images", type=EXISTING_DIR, required=True, help="Images to judge (any folder).")
@click.option("--train", type=EXISTING_DIR, required=True, help="The images they must not copy.")
@click.option("--real", type=EXISTING_DIR, help="Held-out real images for KID and coverage.")
@MODELS_OPTION
@click.option("--out", type=DIR, required=True, help="Report folder (report.json, report.html).")
@click.option(
    "--inception",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="torchvision inception_v3 weights, to add FID.",
)
def evaluate(
    images: Path, train: Path, real: Path | None, models: Path, out: Path, inception: Path | None
):
    """Judge images like the thesis' Table 4.1 (green/yellow/white/red) plus KID, with a report."""
    from training.evaluate import evaluate_folder

    report = evaluate_folder(images, train, models, out, real_dir=real, inception=inception)
    fractions = ", ".join(f"{k} {v:.1%}" for k, v in report["categories"].items())
    click.echo(f"{fractions}; report: {out / 'report.html'}")


@cli.command()
@MODELS_OPTION
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True)
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              envvar=WORKERS_ENV, help="Worker processes (also $BOXGEN_WORKERS). On a CPU node, "
              "one per CPU serves many small requests fastest; each loads its own models.")
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BOXGEN_API_KEY_FILE",
    help="File holding the API key (also $BOXGEN_API_KEY); none: no key required.",
)
def serve(models: Path, port: int, host: str, workers: int, api_key_file: Path | None):
    """Serve /generate, /finetune, /jobs, /models, /metrics and health checks over HTTP."""
    # The server is `python -m service.serve`, exec'd in this process (same pid, so signals
    # and process groups behave as before): training never imports the HTTP layer.
    command = [sys.executable, "-m", "service.serve", "--models", str(models), "--port",
               str(port), "--host", host, "--workers", str(workers)]
    if api_key_file is not None:
        command += ["--api-key-file", str(api_key_file)]
    sys.stdout.flush()
    os.execv(sys.executable, command)


@cli.command()
@click.option("--out", type=DIR, default=Path("out/demo"), show_default=True)
@click.option("--pretrain-iterations", type=click.IntRange(1), help="Override the demo's default.")
@click.option("--finetune-iterations", type=click.IntRange(1), help="Override the demo's default.")
@click.option("--labeller-epochs", type=click.IntRange(1), help="Override the demo's default.")
def demo(
    out: Path,
    pretrain_iterations: int | None,
    finetune_iterations: int | None,
    labeller_epochs: int | None,
):
    """Run the whole product on the built-in corpus: train, publish, serve, call /generate."""
    from training.demo import DemoConfig, run_demo

    changes = {
        "pretrain_iterations": pretrain_iterations,
        "finetune_iterations": finetune_iterations,
        "labeller_epochs": labeller_epochs,
    }
    cfg = DemoConfig(**{k: v for k, v in changes.items() if v is not None})
    run_demo(out, cfg)


def main() -> None:
    cli(prog_name="boxgen")


if __name__ == "__main__":
    sys.exit(main())
