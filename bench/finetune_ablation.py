"""Few-shot fine-tune ablation: which techniques turn ten images into a usable generator.

    python bench/finetune_ablation.py [--models out/demo/models] [--groups 12 13 14]
        [--iterations 2000] [--variants thesis default ...] [--samples 300] [--rejudge]

For each product group the base never saw, ten rendered arrangements are the training photos and
`--heldout` others the real images KID compares with. Each variant fine-tunes the pretrained
base (`models/_base`) on the ten photos and is judged like the thesis' Table 4.1: green / yellow
/ white / red on `--samples` samples of the EMA generator (`training.evaluate.evaluate_generator`
with a selector fitted on the ten photos), plus KID against the held-out arrangements and the
fine-tune's wall time (snapshot judging included where the variant selects snapshots).

Variants: `thesis` is the thesis' ten-image recipe (plain WGAN-GP, batch 8, no augmentation, no
EMA, no freezing, no CDC, the last snapshot); `+augment`, `+ema`, `+freezed`, `+cdc`, `+select`
add one technique each; `default` is `training.config.FINETUNE` with snapshot selection (what
`boxgen finetune` runs); `scratch` is the default recipe without a base (and so without CDC and
FreezeD, which need one). `--extra-variant 'name={"cdc_weight": 2, "select": true}'` adds one
(changes relative to the thesis recipe; "base": false trains from scratch).

The table's first row, `real`, judges the held-out real arrangements the same way: the most a
generator can reach with this labeller and these ten photos.

Snapshot selection judges checkpoints on latents of seed 0; the table's evaluation uses seed 1,
so a variant cannot win by picking the snapshot that happened to suit the evaluation samples.
Without `--models`, the corpus, base and labeller are made like `make demo` makes them (about
as long as its first three steps). Finished runs are reused from `--work`; `--rejudge`
re-evaluates them after a change to the judge (`service/core/selector.py` and its measures)
without training again.
On CUDA the same command runs; `--models` with a thesis-profile base gives the thesis table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.core.gan_session import latents, to_uint8
from service.core.labeller_session import LabellerSession
from service.core.repository import BASE, LABELLER, LATEST_CHECKPOINT, ModelRepository
from service.core.selector import Selector, category_fractions
from training.checkpoint import latest_checkpoint, load_checkpoint
from training.config import FINETUNE, TrainConfig
from training.data import load_images
from training.devices import pick_device
from training.evaluate import evaluate_generator, fit_selector
from training.export import generator_from_checkpoint
from training.finetune import BEST, SNAPSHOTS, SnapshotJudge, finetune_config
from training.loop import Callback, Run, train
from training.render import write_corpus

ROOT = Path(__file__).resolve().parent
THESIS = dict(batch_size=8, n_critic=5, augment="", ema_beta=0.0, freeze_critic_blocks=0,
              cdc_weight=0.0)
# One technique on top of the thesis recipe: the default recipe's setting where it has one.
FALLBACK = dict(augment="color,translation,cutout", ema_beta=0.999, freeze_critic_blocks=2,
                cdc_weight=1.0)
TECHNIQUES = {
    "+augment": ["augment"],
    "+ema": ["ema_beta"],
    "+freezed": ["freeze_critic_blocks"],
    "+cdc": ["cdc_weight"],
}
ORDER = ["thesis", *TECHNIQUES, "+select", "default", "scratch"]
EVAL_SEED = 1  # snapshot judging samples seed 0
REAL = "real"  # the table's first row: held-out real arrangements, judged like samples


def variant_spec(name: str, extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"overrides": config changes, "select": bool, "base": bool, "finetune": bool}.

    Overrides apply to the base's config, after `FINETUNE` when "finetune" is true (the thesis
    recipe and its one-technique variants start from the base config alone).
    """
    if name in extra:
        spec = dict(extra[name])
        select, base = bool(spec.pop("select", False)), bool(spec.pop("base", True))
        return {"overrides": {**THESIS, **spec}, "select": select, "base": base,
                "finetune": False}
    if name == "thesis":
        return {"overrides": dict(THESIS), "select": False, "base": True, "finetune": False}
    if name in TECHNIQUES:
        on = {k: FINETUNE.get(k) or FALLBACK[k] for k in TECHNIQUES[name]}
        return {"overrides": {**THESIS, **on}, "select": False, "base": True, "finetune": False}
    if name == "+select":
        return {"overrides": dict(THESIS), "select": True, "base": True, "finetune": False}
    if name == "default":
        return {"overrides": {}, "select": True, "base": True, "finetune": True}
    if name == "scratch":
        scratch = {"cdc_weight": 0.0, "freeze_critic_blocks": 0}
        return {"overrides": scratch, "select": True, "base": False, "finetune": True}
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(ORDER + list(extra))}")


# ----------------------------------------------------------------------------- preparation


def prepare_models(work: Path) -> Path:
    """Corpus, base and labeller made like `make demo` (training.demo.DemoConfig)."""
    from training.config import profile
    from training.demo import DemoConfig
    from training.labeller import train_labeller
    from training.pretrain import pretrain, publish_pretrained

    cfg = DemoConfig()
    models = work / "models"
    repo = ModelRepository(models)
    corpus = work / "corpus"
    if not (corpus / "data.yaml").is_file():
        write_corpus(corpus, cfg.pretrain_groups, cfg.per_group, (cfg.size, cfg.size), cfg.seed)
    if not repo.versions(BASE):
        print(f"pretraining the base ({cfg.pretrain_iterations} iterations)", flush=True)
        pcfg = profile("demo").replace(iterations=cfg.pretrain_iterations, seed=cfg.seed)
        pretrain(pcfg, corpus, work / "runs" / "base", progress=False)
        publish_pretrained(work / "runs" / "base", models)
    if not repo.versions(LABELLER):
        print(f"training the labeller ({cfg.labeller_epochs} epochs)", flush=True)
        train_labeller(corpus, models, cfg.labeller_model, cfg.labeller_epochs,
                       recipe="auto", progress=False)  # the demo's labeller recipe
    return models


def group_images(work: Path, group: int, size: int, photos: int, heldout: int,
                 seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """The group's first `photos` arrangements ([-1, 1] tensors) and `heldout` others (uint8)."""
    folder = work / "groups" / f"g{group:03d}-{size}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    if not (folder / "data.yaml").is_file():
        # Render beside it and rename: two ablation processes may share a work folder.
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        write_corpus(tmp / "corpus", 1, photos + heldout, (size, size), seed, first_group=group)
        try:
            (tmp / "corpus").rename(folder)
        except OSError:
            pass  # another process finished first; its images are the same
        shutil.rmtree(tmp, ignore_errors=True)
    data = load_images(folder, size)
    if len(data.images) < photos + heldout:
        raise ValueError(f"{folder} holds {len(data.images)} images, need {photos + heldout}")
    real = to_uint8(data.images[photos : photos + heldout].numpy())
    return data.images[:photos], real


# ----------------------------------------------------------------------------- one run


class JudgeTimer(Callback):
    """Time spent judging snapshots, so wall times can be split into training and judging."""

    def __init__(self, judge: SnapshotJudge):
        self.judge, self.seconds = judge, 0.0

    def on_checkpoint(self, run: Run, path: Path) -> None:
        started = time.perf_counter()
        self.judge.on_checkpoint(run, path)
        self.seconds += time.perf_counter() - started


def sampler(generator: torch.nn.Module, z_dim: int, device: torch.device):
    def sample(n: int, seed: int) -> np.ndarray:
        z = torch.from_numpy(latents(n, z_dim, seed)).to(device)
        with torch.no_grad():
            return to_uint8(generator(z).float().cpu().numpy())

    return sample


def judge_snapshot(run_dir: Path, select: bool, selector: Selector, labeller: LabellerSession,
                   real: np.ndarray, samples: int) -> dict[str, Any]:
    """Evaluate a finished run's published snapshot (best with selection, else the last)."""
    checkpoints = latest_checkpoint(run_dir).parent
    state = load_checkpoint(checkpoints / (BEST if select else LATEST_CHECKPOINT))
    device = pick_device()
    generator = generator_from_checkpoint(state).to(device)
    report = evaluate_generator(sampler(generator, state["config"]["z_dim"], device), selector,
                                labeller, n=samples, real_images=real, seed=EVAL_SEED)
    return {
        "snapshot_step": state["step"],
        # Without detections on the photos, quality is not measured and every new image is green.
        "quality_measured": selector.quality is not None,
        "categories": report["categories"],
        "kid": report["metrics"].get("kid"),
        "novelty_median": report["metrics"].get("novelty_median"),
        "snapshots": (json.loads((checkpoints / SNAPSHOTS).read_text())
                      if select else None),
    }


def run_variant(name: str, spec: dict[str, Any], group: int, base: dict[str, Any],
                photos: torch.Tensor, real: np.ndarray, selector: Selector,
                labeller: LabellerSession, iterations: int, samples: int, work: Path,
                rejudge: bool = False) -> dict[str, Any]:
    """Fine-tune one variant on one group (or reuse a finished run) and evaluate it.

    rejudge: re-evaluate a finished run's snapshot with the current judge instead of reusing
    its stored verdict (after a change to `service.core.novelty`); which snapshot a selecting
    variant published stays the one the judge of its training time chose.
    """
    overrides = {**spec["overrides"], "iterations": iterations}
    if spec["finetune"]:
        cfg = finetune_config(base, overrides)
    else:
        cfg = TrainConfig.from_dict(base["config"]).replace(**overrides)
    key = json.dumps({"cfg": cfg.to_dict(), "select": spec["select"], "base": spec["base"],
                      "samples": samples, "group": group}, sort_keys=True)
    run_dir = work / "runs" / f"{name}-g{group:03d}-i{iterations}"
    result_file = run_dir / "result.json"
    if result_file.is_file():
        done = json.loads(result_file.read_text())
        if done.get("key") == key:
            if rejudge:
                done.update(judge_snapshot(run_dir, spec["select"], selector, labeller, real,
                                           samples))
                result_file.write_text(json.dumps(done, indent=1))
            return done
    shutil.rmtree(run_dir, ignore_errors=True)

    callbacks: list[Callback] = []
    timer = None
    if spec["select"]:
        timer = JudgeTimer(SnapshotJudge(selector, labeller, None))
        callbacks.append(timer)
    started = time.perf_counter()
    run = train(cfg, photos, run_dir, callbacks, base=base if spec["base"] else None)
    wall = time.perf_counter() - started
    result = {
        "key": key,
        "variant": name,
        "group": group,
        "iterations": iterations,
        **judge_snapshot(run_dir, spec["select"], selector, labeller, real, samples),
        "wall_s": wall,
        "judge_s": timer.seconds if timer else 0.0,
        "config": {k: cfg.to_dict()[k] for k in ("batch_size", "augment", "ema_beta",
                                                 "freeze_critic_blocks", "cdc_weight",
                                                 "lr_g", "lr_d", "n_critic")},
        "device": str(run.device),
    }
    result_file.write_text(json.dumps(result, indent=1))
    return result


def judge_real(group: int, real: np.ndarray, selector: Selector,
               labeller: LabellerSession) -> dict[str, Any]:
    """The held-out real arrangements judged like samples: the ceiling a generator can reach."""
    categories = category_fractions(selector.score(real, labeller.label(real)))
    return {"variant": REAL, "group": group, "categories": categories, "kid": None,
            "wall_s": 0.0, "judge_s": 0.0, "snapshot_step": "-",
            "quality_measured": selector.quality is not None}


# ----------------------------------------------------------------------------- table


def table(results: list[dict[str, Any]], variants: list[str]) -> str:
    """Markdown: one row per variant, means over groups, then per-group green/red."""
    groups = sorted({r["group"] for r in results})
    head = ("| variant | green | yellow | white | red | KID | fine-tune s | judge s | best step |"
            " " + " ".join(f"g{g} green/red |" for g in groups))
    lines = [head, "|" + "---|" * (9 + len(groups))]
    for name in variants:
        rows = [r for r in results if r["variant"] == name]
        if not rows:
            continue
        mean = {c: np.mean([r["categories"][c] for r in rows])
                for c in ("green", "yellow", "white", "red")}
        kids = [r["kid"] for r in rows if r["kid"] is not None]
        by_group = {r["group"]: r for r in rows}
        per_group = " ".join(
            f"{by_group[g]['categories']['green']:.0%} / {by_group[g]['categories']['red']:.0%} |"
            if g in by_group else "- |" for g in groups)
        steps = ",".join(str(r["snapshot_step"]) for r in rows)
        lines.append(
            f"| {name} | {mean['green']:.1%} | {mean['yellow']:.1%} | {mean['white']:.1%} | "
            f"{mean['red']:.1%} | {f'{np.mean(kids):.4f}' if kids else '-'} | "
            f"{np.mean([r['wall_s'] for r in rows]):.0f} | "
            f"{np.mean([r['judge_s'] for r in rows]):.0f} | {steps} | {per_group}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="a models folder with _base and _labeller")
    parser.add_argument("--work", type=Path, default=Path("out/finetune-ablation"))
    parser.add_argument("--groups", type=int, nargs="+", default=[12, 13, 14])
    parser.add_argument("--iterations", type=int, default=FINETUNE["iterations"])
    parser.add_argument("--variants", nargs="+", default=ORDER)
    parser.add_argument("--extra-variant", action="append", default=[],
                        help='name={"key": value, ...} relative to the thesis recipe')
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--rejudge", action="store_true",
                        help="re-evaluate finished runs with the current judge")
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--heldout", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "finetune_ablation.md")
    args = parser.parse_args()

    extra = {}
    for item in args.extra_variant:
        name, _, spec = item.partition("=")
        extra[name] = json.loads(spec)
    specs = {name: variant_spec(name, extra) for name in args.variants}
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    models = args.models or prepare_models(work)
    repo = ModelRepository(models)
    base = load_checkpoint(repo.resolve(BASE).file("base.pt"))
    labeller = LabellerSession.from_repository(models)
    base_cfg = TrainConfig.from_dict(base["config"])
    device = pick_device()
    print(f"device {device}, base {repo.resolve(BASE).path}, resolution {base_cfg.resolution}, "
          f"groups {args.groups}, {args.iterations} iterations, {args.samples} samples",
          flush=True)

    results = []
    for group in args.groups:
        photos, real = group_images(work, group, base_cfg.resolution, args.photos, args.heldout,
                                    base_cfg.seed)
        # One selector per group, fitted on its ten photos, judges every variant and the reals.
        selector = fit_selector(to_uint8(photos.numpy()), labeller)
        results.append(judge_real(group, real, selector, labeller))
        for name, spec in specs.items():
            r = run_variant(name, spec, group, base, photos, real, selector, labeller,
                            args.iterations, args.samples, work, args.rejudge)
            c = r["categories"]
            print(f"g{group} {name:<12} green {c['green']:.1%} yellow {c['yellow']:.1%} "
                  f"white {c['white']:.1%} red {c['red']:.1%} kid {r['kid']:.4f} "
                  f"{r['wall_s']:.0f} s (judge {r['judge_s']:.0f} s), step {r['snapshot_step']}",
                  flush=True)
            results.append(r)

    text = table(results, [REAL, *specs])
    header = (f"# Few-shot fine-tune ablation\n\n`python bench/finetune_ablation.py "
              f"--iterations {args.iterations} --groups {' '.join(map(str, args.groups))}`; "
              f"device {device}, base resolution {base_cfg.resolution}, {args.photos} photos, "
              f"{args.samples} samples (seed {EVAL_SEED}), KID against {args.heldout} held-out "
              f"arrangements. Categories are means over groups.\n\n")
    unmeasured = sorted({r["group"] for r in results if not r["quality_measured"]})
    if unmeasured:
        header += (f"**Warning:** the labeller found nothing on the photos of groups {unmeasured}: "
                   "quality was not measured there and every new image counts as green.\n\n")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "specs": specs,
         "results": results}, indent=1))


if __name__ == "__main__":
    main()
