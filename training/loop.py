"""The GAN training loop, used by both pretraining and fine-tuning.

`train()` reads top-down: build networks, restore state, then n_critic critic steps and one
generator step per iteration, with the generator EMA, logging, sample grids and checkpoints
delivered to callbacks. All randomness (batches, latents, penalty points, augmentation) comes
from one CPU `torch.Generator` whose state is checkpointed, so a resumed run continues exactly
where the interrupted one stopped: 2 + 2 iterations with a resume equal 4 straight.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.core.repository import CHECKPOINTS_DIR, LATEST_CHECKPOINT
from training.augment import diff_augment
from training.cdc import cdc_loss, frozen_source, generator_features
from training.checkpoint import git_commit, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.devices import pick_device
from training.losses import critic_loss, generator_loss, penalty
from training.networks import Critic, Generator


class Callback:
    """Hooks the loop calls; subclasses override the ones they need."""

    def on_train_start(self, run: Run) -> None: ...

    def on_step_end(self, run: Run, metrics: dict[str, float]) -> None: ...

    def on_sample(self, run: Run, images: torch.Tensor) -> None: ...

    def on_checkpoint(self, run: Run, path: Path) -> None: ...

    def on_train_end(self, run: Run) -> None: ...


@dataclass
class Run:
    """Everything the loop owns, handed to callbacks."""

    cfg: TrainConfig
    run_dir: Path
    generator: Generator
    critic: Critic
    generator_ema: Generator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    rng: torch.Generator
    device: torch.device
    step: int = 0
    total: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in checkpoints (e.g. parent)
    generator_source: Generator | None = None  # frozen base generator, when CDC is on

    def state_dict(self) -> dict[str, Any]:
        source = self.generator_source
        return {
            "config": self.cfg.to_dict(),
            "step": self.step,
            "generator": self.generator.state_dict(),
            "critic": self.critic.state_dict(),
            "generator_ema": self.generator_ema.state_dict(),
            "generator_args": self.generator.init_args(),
            "critic_args": self.critic.init_args(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": self.rng.get_state(),
            "git_commit": git_commit(),
            "extra": self.extra,
            # CDC's frozen source travels with the run, so a resume needs no base file.
            **({"generator_source": source.state_dict()} if source is not None else {}),
        }


def set_deterministic(enabled: bool) -> None:
    """CPU kernels are deterministic already; CUDA's atomics-based ones are not."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def ema_decay(cfg: TrainConfig, step: int) -> float:
    """The EMA decay at generator step `step` (from 1): `cfg.ema_beta`, its half-life capped at
    `cfg.ema_rampup` × step. Without the cap a 1500-step run at 0.999 (half-life 693 steps)
    publishes a blur of its early generators."""
    if cfg.ema_beta == 0 or cfg.ema_rampup == 0:
        return cfg.ema_beta
    half_life = math.log(0.5) / math.log(cfg.ema_beta)
    return 0.5 ** (1 / min(half_life, cfg.ema_rampup * step))


def build_networks(cfg: TrainConfig) -> tuple[Generator, Critic]:
    generator = Generator(cfg.z_dim, cfg.resolution, cfg.g_channels, cfg.max_channels)
    critic = Critic(cfg.resolution, cfg.d_channels, cfg.max_channels, cfg.critic_norm)
    return generator, critic


def check_compatible(cfg: TrainConfig, base: dict[str, Any]) -> None:
    """A fine-tune must keep the base's network shapes; say which field differs."""
    base_cfg = TrainConfig.from_dict(base["config"])
    for name in ("resolution", "z_dim", "g_channels", "d_channels", "max_channels", "critic_norm"):
        if getattr(cfg, name) != getattr(base_cfg, name):
            raise ValueError(
                f"{name}={getattr(cfg, name)} does not match the base model's "
                f"{name}={getattr(base_cfg, name)}"
            )


def train(
    cfg: TrainConfig,
    images: torch.Tensor,
    run_dir: Path,
    callbacks: Sequence[Callback] = (),
    base: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Run:
    """Train until `cfg.iterations` generator steps, resuming from `run_dir` if it has a checkpoint.

    images: the training set, [N, 3, R, R] in [-1, 1].
    base: a checkpoint whose generator, EMA generator and critic weights to start from (fine-tune);
        ignored when the run resumes from its own checkpoint.
    """
    run_dir = Path(run_dir)
    set_deterministic(cfg.deterministic)
    device = pick_device()
    if images.ndim != 4 or images.shape[-1] != cfg.resolution or images.shape[-2] != cfg.resolution:
        raise ValueError(
            f"images must be [N, 3, {cfg.resolution}, {cfg.resolution}], got {list(images.shape)}"
        )

    # Networks, EMA copy and optimisers.
    torch.manual_seed(cfg.seed)  # weight init only; the loop's own draws use `rng`
    generator, critic = build_networks(cfg)
    generator_ema = copy.deepcopy(generator).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(generator.parameters(), cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(critic.parameters(), cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    rng = torch.Generator().manual_seed(cfg.seed)
    run = Run(cfg, run_dir, generator, critic, generator_ema, opt_g, opt_d, rng, device)
    run.extra = dict(extra or {})

    # Restore: our own checkpoint (resume) wins over the base (fine-tune start).
    resume = run_dir / CHECKPOINTS_DIR / LATEST_CHECKPOINT
    source_state = None  # the generator CDC keeps distances like (the base's)
    if resume.is_file():
        state = load_checkpoint(resume)
        check_compatible(cfg, state)
        source_state = state.get("generator_source")
        for name in ("generator", "critic", "generator_ema", "opt_g", "opt_d"):
            getattr(run, name).load_state_dict(state[name])
        rng.set_state(state["rng"])
        run.step = state["step"]
        run.extra = state.get("extra", run.extra)
    elif base is not None:
        check_compatible(cfg, base)
        generator.load_state_dict(base["generator"])
        generator_ema.load_state_dict(base["generator_ema"])
        critic.load_state_dict(base["critic"])
    if base is not None and source_state is None:
        source_state = base["generator"]  # the raw generator the fine-tune starts from
    if cfg.cdc_weight > 0:
        if source_state is None:
            raise ValueError(
                "cdc_weight > 0 needs a base model (CDC compares with the pretrained "
                "generator); set cdc_weight=0 to train from scratch"
            )
        source = copy.deepcopy(generator)
        source.load_state_dict(source_state)
        run.generator_source = frozen_source(source).to(device)
    critic.freeze_blocks(cfg.freeze_critic_blocks)
    for module in (generator, critic, generator_ema):
        module.to(device)
    for opt in (opt_g, opt_d):  # optimiser state follows its parameters' device
        for param_state in opt.state.values():
            for key, value in param_state.items():
                if torch.is_tensor(value) and key != "step":
                    param_state[key] = value.to(device)
    images = images.to(device)
    run.total = cfg.iterations

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    sample_z = torch.randn(
        cfg.grid_size, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed)
    ).to(device)  # fixed latents: grids show the same samples evolving
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if cfg.amp and device.type == "cuda"
        else nullcontext()
    )

    def draw_batch() -> torch.Tensor:
        idx = torch.randint(len(images), (cfg.batch_size,), generator=rng)
        return images[idx.to(device)]

    def draw_z() -> torch.Tensor:
        return torch.randn(cfg.batch_size, cfg.z_dim, generator=rng).to(device)

    for cb in callbacks:
        cb.on_train_start(run)
    generator.train()
    critic.train()
    while run.step < cfg.iterations:
        started = time.perf_counter()

        # Critic: n_critic steps on fresh real batches and fresh fakes.
        for _ in range(cfg.n_critic):
            real = draw_batch()
            with torch.no_grad(), autocast:
                fake = generator(draw_z())
            # The critic only ever sees augmented images, so its Lipschitz penalty is taken
            # there too: penalising clean interpolates leaves it free to blow up on cutouts.
            real_aug = diff_augment(real, cfg.augment, rng)
            fake_aug = diff_augment(fake.float(), cfg.augment, rng)
            with autocast:
                real_scores = critic(real_aug)
                fake_scores = critic(fake_aug)
                loss_d = critic_loss(cfg.loss, real_scores.float(), fake_scores.float())
            # The penalty differentiates through the critic twice; fp32 keeps it stable.
            pen = penalty(cfg.penalty, critic, real_aug, fake_aug, cfg.penalty_weight, rng)
            opt_d.zero_grad(set_to_none=True)
            (loss_d + pen.penalty).backward()
            opt_d.step()

        # Generator: one step through the (augmented) critic, plus CDC when on.
        with autocast:
            z = draw_z()
            if run.generator_source is None:
                fake = generator(z)
            else:
                fake, features = generator_features(generator, z)
                with torch.no_grad():
                    _, source_features = generator_features(run.generator_source, z)
                loss_cdc = cdc_loss(source_features, features)
            loss_g = generator_loss(cfg.loss, critic(diff_augment(fake, cfg.augment, rng)).float())
        loss_total = loss_g if run.generator_source is None else loss_g + cfg.cdc_weight * loss_cdc
        opt_g.zero_grad(set_to_none=True)
        loss_total.backward()
        opt_g.step()

        # Generator EMA: smoother samples than the raw generator, as in StyleGAN2-ADA.
        with torch.no_grad():
            beta = ema_decay(cfg, run.step + 1)
            for p_ema, p in zip(generator_ema.parameters(), generator.parameters(), strict=True):
                p_ema.lerp_(p.detach(), 1.0 - beta)
            for b_ema, b in zip(generator_ema.buffers(), generator.buffers(), strict=True):
                b_ema.copy_(b)
        run.step += 1

        # Logging, sample grids, checkpoints. Reading losses forces a GPU sync, so only on
        # logging steps; callbacks read metrics only then.
        last = run.step == cfg.iterations
        metrics: dict[str, float] = {"step": run.step}
        if run.step % cfg.log_every == 0 or last:
            metrics |= {
                "loss_d": loss_d.item(),
                "loss_g": loss_g.item(),
                "penalty": pen.penalty.item(),
                "grad_norm": pen.grad_norm.item() if pen.grad_norm is not None else 0.0,
                "wasserstein": (real_scores.float().mean() - fake_scores.float().mean()).item(),
                "seconds_per_step": time.perf_counter() - started,
            }
            if run.generator_source is not None:
                metrics["cdc"] = loss_cdc.item()
        for cb in callbacks:
            cb.on_step_end(run, metrics)
        if run.step % cfg.sample_every == 0 or last:
            with torch.no_grad():
                grid = generator_ema(sample_z).float().cpu()
            for cb in callbacks:
                cb.on_sample(run, grid)
        if run.step % cfg.checkpoint_every == 0 or last:
            path = save_checkpoint(run.state_dict(), resume)
            for cb in callbacks:
                cb.on_checkpoint(run, path)

    for cb in callbacks:
        cb.on_train_end(run)
    return run
