"""Training configuration: one frozen dataclass with the thesis' defaults, and named profiles.

`thesis` is the 2021 thesis' WGAN-GP at 256² (GPU); `demo` is the same recipe scaled to run on a
2-core CPU in minutes; `tiny` runs in seconds for tests. Fine-tunes start from a profile and
apply `FINETUNE` on top (the thesis used batch 8 for its ten-image runs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from training.augment import parse_policy
from training.data import FITS
from training.losses import LOSS_MODES, PENALTIES
from training.networks import NORMS


@dataclass(frozen=True)
class TrainConfig:
    # Networks (thesis tables, see DESIGN.md section 1).
    resolution: int = 256  # square image side, a power of two from 32 to 256
    z_dim: int = 128  # latent size, z ~ N(0, 1)
    g_channels: int = 64  # generator channels at resolution/2; doubles per halving
    d_channels: int = 64  # critic channels of its first block; doubles per block
    max_channels: int = 512  # channel cap for both networks
    critic_norm: str = "layer"  # layer (WGAN-GP) | batch (GAN) | none

    # Objective.
    loss: str = "wgan"  # gan | lsgan | hinge | wgan
    penalty: str = "wgan-gp"  # none | wgan-gp | dragan
    penalty_weight: float = 10.0

    # Optimisation (thesis: Adam 2e-4, beta1 0.5, batch 64, five critic steps per G step).
    batch_size: int = 64
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_critic: int = 5
    iterations: int = 40_000  # generator steps
    ema_beta: float = 0.999  # generator EMA decay per generator step; 0 disables it
    # EMA ramp-up (StyleGAN2-ADA): the EMA's half-life is at most this fraction of the steps so
    # far, so the EMA of a short run is not a blur of its first steps; 0 disables it.
    ema_rampup: float = 0.05

    # Few-shot techniques (off in the thesis recipe).
    augment: str = ""  # DiffAugment policy, e.g. "color,translation,cutout"
    freeze_critic_blocks: int = 0  # FreezeD: first k critic blocks keep their base weights
    # CDC (training/cdc.py): weight of the cross-domain distance-consistency loss against a
    # frozen copy of the base generator; 0 disables it. Needs a base model.
    cdc_weight: float = 0.0

    # Data.
    fit: str = "stretch"  # stretch (thesis) | letterbox

    # Logging and checkpoints, in generator steps.
    log_every: int = 10
    sample_every: int = 250  # thesis: a 100-image grid every 250 generator steps
    grid_size: int = 100
    checkpoint_every: int = 500
    eval_samples: int = 300  # fine-tunes judge each checkpoint on this many samples (thesis: 300)

    seed: int = 0
    amp: bool = True  # bfloat16 autocast when on CUDA; ignored on CPU
    deterministic: bool = False  # deterministic CUDA kernels (bit-exact resume on GPU, slower)

    def __post_init__(self) -> None:
        """Refuse bad values here, with the field's name, not at the first training step."""
        for name in ("log_every", "sample_every", "checkpoint_every", "batch_size", "n_critic",
                     "grid_size", "eval_samples", "z_dim", "g_channels", "d_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("iterations", "freeze_critic_blocks", "cdc_weight", "penalty_weight",
                     "ema_rampup"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.cdc_weight > 0 and self.batch_size < 3:  # it compares pairs within a batch
            raise ValueError(f"cdc_weight needs batch_size >= 3, got {self.batch_size}")
        if not 0 <= self.ema_beta < 1:
            raise ValueError(f"ema_beta must be in [0, 1), got {self.ema_beta}")
        choices = {"loss": LOSS_MODES, "penalty": PENALTIES, "critic_norm": NORMS, "fit": FITS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(
                    f"{name} {getattr(self, name)!r} is not one of {', '.join(valid)}"
                )
        parse_policy(self.augment)  # raises ValueError naming the valid policies

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


PROFILES: dict[str, TrainConfig] = {
    "thesis": TrainConfig(),
    "demo": TrainConfig(
        resolution=64,
        g_channels=16,
        d_channels=16,
        max_channels=256,
        batch_size=32,
        iterations=1500,
        sample_every=250,
        grid_size=64,
        checkpoint_every=250,
    ),
    "tiny": TrainConfig(
        resolution=32,
        z_dim=16,
        g_channels=8,
        d_channels=8,
        max_channels=32,
        batch_size=8,
        n_critic=2,
        iterations=20,
        log_every=2,
        sample_every=10,
        grid_size=16,
        checkpoint_every=10,
        eval_samples=16,
    ),
}

# What a ten-image fine-tune changes on top of its base profile. Chosen by
# bench/finetune_ablation.py (bench/results/finetune_ablation.md): DiffAugment is what keeps
# the critic from memorising the photos (copies 18-26 % -> 0 % on every group); 2000 steps
# because green still grows past 1000 while copies creep in after ~2250; the best snapshot is
# published. EMA, CDC and FreezeD move green by less than the measurement's noise there; EMA and
# CDC stay on as the few-shot literature's guards (smoother samples, latents kept apart).
FINETUNE: dict[str, Any] = dict(
    iterations=2000,
    batch_size=8,
    augment="color,translation,cutout",
    freeze_critic_blocks=0,
    ema_beta=0.99,
    cdc_weight=1000.0,
)


def profile(name: str) -> TrainConfig:
    """The named profile; unknown names raise ValueError listing the valid ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown profile {name!r}; choose one of {', '.join(sorted(PROFILES))}"
        ) from None


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `key=value` strings, converting each value to the field's type."""
    return cfg.replace(**parse_overrides(overrides))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`key=value` strings to typed config changes; bad keys or values raise ValueError."""
    cfg = TrainConfig()
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(
                f"bad override {item!r}: expected key=value with key one of {', '.join(fields)}"
            )
        kind = type(getattr(cfg, key))
        try:
            if kind is bool:
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError
                changes[key] = raw.lower() in ("1", "true", "yes")
            else:
                changes[key] = kind(raw)
        except ValueError:
            raise ValueError(f"bad override {item!r}: {key} takes a {kind.__name__}") from None
    return changes
