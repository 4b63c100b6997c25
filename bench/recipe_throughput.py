"""Labelled images per second, compose against gan at the same size, side by side in one run.

    python bench/recipe_throughput.py --models out/demo/models [--size 256] [--n 64]

Both SKUs are published into a scratch copy of `--models` (its labeller is used): a gan SKU
from an untrained generator of the profile whose resolution is `--size` (`thesis` for 256:
speed does not depend on the weights), and two compose SKUs from ten rendered cluttered bins:
plain composites (the default) and with a refiner trained one step (the same compute as a
trained one). Each is timed through `Pipeline.generate` as `/generate` runs it with
select=none (gan: sample, then the labeller labels; compose: compose (and refine), labels by
construction), after a warm-up call; medians of `--repeats`. Prints labelled images/s and the
compose/gan ratios, then compose's rate with select=green (labeller check and judge
included; the untrained gan has no selection data).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from service.core.onnx_session import providers
from service.core.pipeline import ModelCache, Pipeline
from service.core.repository import LABELLER, ModelRepository


def publish_skus(models: Path, size: int, work: Path) -> None:
    """The gan SKU `gan-{size}` and the compose SKUs `compose-{size}` (plain) and
    `refined-{size}` in `models`."""
    from training.config import PROFILES
    from training.finetune import finetune
    from training.loop import build_networks
    from training.render import write_corpus

    cfg = next((p for p in PROFILES.values() if p.resolution == size), None)
    if cfg is None:
        raise SystemExit(f"no training profile makes {size} px images; choose a size from "
                         f"{sorted({p.resolution for p in PROFILES.values()})}")
    import torch

    from service.core.cards import GeneratorCard
    from training.export import export_onnx

    generator, _ = build_networks(cfg)
    with torch.no_grad():
        path = work / "generator.onnx"
        parity = export_onnx(generator.eval(), path)
    ModelRepository(models).publish(f"gan-{size}", {"generator.onnx": path}, GeneratorCard(
        generator_args=generator.init_args(), onnx_parity_max_abs=parity))
    photos = write_corpus(work / "photos", 1, 10, (size, size), first_group=30,
                          scene="cluttered")
    finetune(f"compose-{size}", photos, models, out=work / "run", progress=False, refine=False)
    finetune(f"refined-{size}", photos, models, out=work / "refined", progress=False,
             overrides={"iterations": 1}, refine=True)


def images_per_second(pipeline: Pipeline, sku: str, n: int, select: str, size: int | None,
                      repeats: int) -> float:
    pipeline.generate(sku, n, seed=0, select=select, size=size)  # warm-up: sessions, arenas
    times = []
    for r in range(repeats):
        started = time.perf_counter()
        result = pipeline.generate(sku, n, seed=r + 1, select=select, size=size)
        times.append((time.perf_counter() - started) / max(len(result.images), 1))
    return 1 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="a repository with a labeller")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n", type=int, default=64, help="images per request")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        shutil.copytree(args.models / LABELLER, models / LABELLER)
        publish_skus(models, args.size, Path(tmp))
        pipeline = Pipeline(ModelCache(ModelRepository(models)))
        print(f"onnxruntime providers: {providers()}; {args.n} images per request, "
              f"{args.size} px")
        gan = images_per_second(pipeline, f"gan-{args.size}", args.n, "none", None,
                                args.repeats)
        compose = images_per_second(pipeline, f"compose-{args.size}", args.n, "none",
                                    args.size, args.repeats)
        refined = images_per_second(pipeline, f"refined-{args.size}", args.n, "none",
                                    args.size, args.repeats)
        print(f"select=none: gan {gan:.1f} labelled img/s, compose {compose:.1f} "
              f"({compose / gan:.2f}x), compose refined {refined:.1f} ({refined / gan:.2f}x)")
        green = images_per_second(pipeline, f"compose-{args.size}", args.n, "green",
                                  args.size, args.repeats)
        print(f"select=green: compose {green:.1f} img/s served (judged and checked)")


if __name__ == "__main__":
    main()
