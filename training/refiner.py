"""The per-SKU refiner of the `compose` recipe: composite + learned correction looks real.

The `compose` recipe pastes cut-out product pixels onto an empty bin. A paste lacks what a
camera adds (contact shadows, lighting that matches the bin, sensor noise, soft edges), so a
small image-to-image network refines it, SimGAN-style (Shrivastava et al. 2017):

- `Refiner`: (composite, mask) -> clamp(composite + correction, -1, 1). Stride-1 dilated
  convolutions, so it runs at any size; its last convolution starts at zero, so an untrained
  refiner is exactly the identity and training starts from the composite itself.
- `RefinerCritic`: a patch critic, no normalisation (the WGAN-GP penalty needs per-sample
  gradients); an image's score is the mean of its patch scores.
- `train_refiner`: WGAN-GP on random crops, both sides through DiffAugment, plus an L1
  self-regularisation towards the composite, which keeps every product where its label says.
  Checkpoints are atomic and a run resumes from its own.
- `export_refiner`: ONNX (composite, mask -> image, dynamic batch, height and width), with a
  parity check against torch at two sizes.

Images are [N, 3, H, W] float in [-1, 1] here; uint8 [H, W, 3] at the numpy boundary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from service.core.atomic import write_json_atomic
from service.core.onnx_session import open_session
from service.core.repository import CHECKPOINTS_DIR, LATEST_CHECKPOINT
from training.augment import diff_augment, parse_policy
from training.checkpoint import git_commit, load_checkpoint, save_checkpoint
from training.devices import pick_device
from training.losses import critic_loss, generator_loss, gradient_penalty

PARITY_LIMIT = 1e-3  # max abs difference between torch and onnxruntime, as for the generator
OPSET = 17
PARITY_SIZES = ((40, 56), (64, 64))  # (H, W): one not a multiple of anything, one square
MIN_SIDE = 16  # reflect padding of the dilation-8 convolution needs a side above 8
# Fields that decide the networks' shapes: a resume or an `init` must match them.
SHAPE_FIELDS = ("channels", "blocks", "critic_channels")

Composites = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]
OnStep = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class RefinerConfig:
    # Networks.
    channels: int = 32  # refiner width
    blocks: int = 4  # residual blocks, dilations 1, 2, 4, 8, 1, ... (receptive field 43 px at 4)
    critic_channels: int = 32  # first critic layer's width; doubles per stride-2 layer

    # Objective.
    gp_weight: float = 10.0  # WGAN-GP penalty weight (Gulrajani et al.)
    # L1 between refined image and composite, per pixel on the [-1, 1] scale. SimGAN's
    # self-regularisation: it keeps the correction small, so products stay where labels say.
    l1_weight: float = 10.0
    augment: str = "color,translation"  # DiffAugment policy for what the critic sees

    # Optimisation (Adam for both networks, WGAN-GP's betas).
    crop: int = 64  # side of the square training crops
    batch_size: int = 16
    steps: int = 500  # refiner steps
    n_critic: int = 2  # critic steps per refiner step
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.9

    # Composites: a pool of `pool_size` from the caller's function, redrawn every
    # `pool_refresh` steps, so rendering them does not dominate the step time.
    pool_size: int = 64
    pool_refresh: int = 100

    log_every: int = 10  # steps between `on_step` calls and metrics.jsonl lines
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse bad values here, with the field's name, not at the first training step."""
        for name in ("channels", "blocks", "critic_channels", "batch_size", "n_critic",
                     "pool_size", "pool_refresh", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("gp_weight", "l1_weight", "steps", "lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.crop < MIN_SIDE:
            raise ValueError(f"crop must be at least {MIN_SIDE}, got {self.crop}")
        parse_policy(self.augment)  # raises ValueError naming the valid policies

    def replace(self, **changes: Any) -> RefinerConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RefinerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


REFINER_PROFILES: dict[str, RefinerConfig] = {
    # 2-core CPU, rendered 256² bins: 0.35 s per step at crop 64, so 500 steps take ~3 min.
    # l1_weight 10 kept the mean correction at 1-14 grey levels (mostly 2-4) over 300 steps:
    # small, but the refiner does change the composite.
    "default": RefinerConfig(),
    "tiny": RefinerConfig(
        channels=8, blocks=2, critic_channels=8, crop=32, batch_size=4, steps=4,
        n_critic=1, pool_size=8, pool_refresh=2, log_every=1, checkpoint_every=2,
    ),
}


def refiner_profile(name: str) -> RefinerConfig:
    """The named profile; unknown names raise ValueError listing the valid ones."""
    try:
        return REFINER_PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown refiner profile {name!r}; choose one of {', '.join(sorted(REFINER_PROFILES))}"
        ) from None


# ----------------------------------------------------------------------- networks


class _Block(nn.Module):
    """x + conv(act(conv_dilated(act(x)))): the dilation widens the view without a stride."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation,
                      padding_mode="reflect"),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Refiner(nn.Module):
    """(composite [N, 3, H, W] in [-1, 1], mask [N, 1, H, W] in [0, 1]) -> image [N, 3, H, W].

    Any H, W >= MIN_SIDE: every convolution has stride 1 and reflect padding, so nothing is
    rounded to a multiple of a stride and borders do not darken.
    """

    def __init__(self, channels: int = 32, blocks: int = 4) -> None:
        super().__init__()
        self.head = nn.Conv2d(4, channels, 3, padding=1, padding_mode="reflect")
        self.blocks = nn.Sequential(*(_Block(channels, 2 ** (i % 4)) for i in range(blocks)))
        self.tail = nn.Sequential(
            nn.LeakyReLU(0.2), nn.Conv2d(channels, 3, 3, padding=1, padding_mode="reflect")
        )
        # Zero correction at start: the untrained refiner is the identity.
        nn.init.zeros_(self.tail[1].weight)
        nn.init.zeros_(self.tail[1].bias)

    def forward(self, composite: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([composite, mask * 2 - 1], dim=1)  # [N, 4, H, W], mask centred like pixels
        correction = self.tail(self.blocks(self.head(x)))  # [N, 3, H, W]
        return torch.clamp(composite + correction, -1.0, 1.0)


class RefinerCritic(nn.Module):
    """Image [N, 3, H, W] -> score [N], the mean of its patch scores (H, W >= 16)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        widths = (channels, channels * 2, channels * 4)
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in widths:  # each halves the side; a score sees ~46 px
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(1, 2, 3))  # [N]


def build_refiner(cfg: RefinerConfig) -> tuple[Refiner, RefinerCritic]:
    return Refiner(cfg.channels, cfg.blocks), RefinerCritic(cfg.critic_channels)


def refiner_from_state(state: dict[str, Any]) -> Refiner:
    """The refiner of a state `train_refiner` returned (or a checkpoint), in eval mode."""
    cfg = RefinerConfig.from_dict(state["config"])
    refiner = Refiner(cfg.channels, cfg.blocks)
    refiner.load_state_dict(state["refiner"])
    return refiner.eval()


def _check_shapes(cfg: RefinerConfig, other: dict[str, Any], what: str) -> None:
    theirs = RefinerConfig.from_dict(other["config"])
    for name in SHAPE_FIELDS:
        if getattr(cfg, name) != getattr(theirs, name):
            raise ValueError(
                f"{name}={getattr(cfg, name)} does not match the {what}'s "
                f"{name}={getattr(theirs, name)}"
            )


# ----------------------------------------------------------------------- data


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 127.5 - 1
    return x.movedim(-1, -3)


class _Crops:
    """Random aligned crops of real photos and of a pool of composites with their masks."""

    def __init__(self, real: Sequence[np.ndarray], composites: Composites, cfg: RefinerConfig):
        if not real:
            raise ValueError("train_refiner needs at least one real photo")
        for i, image in enumerate(real):
            if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < cfg.crop:
                raise ValueError(
                    f"real[{i}] must be [H, W, 3] with sides >= crop={cfg.crop}, "
                    f"got {list(image.shape)}"
                )
        self.real = [to_tensor(image) for image in real]  # each [3, H, W]
        self.composites = composites
        self.cfg = cfg
        self.pool: torch.Tensor | None = None  # [P, 4, H, W]: RGB then mask
        self.pool_id = -1

    def refresh(self, step: int) -> None:
        """Draw the pool of `step`'s period; its seed is (seed, period), so a resume sees the
        same composites the interrupted run did."""
        pool_id = step // self.cfg.pool_refresh
        if pool_id == self.pool_id:
            return
        rng = np.random.default_rng([self.cfg.seed, pool_id])
        images, masks = self.composites(self.cfg.pool_size, rng)
        if (images.ndim != 4 or images.shape[3] != 3 or masks.shape != images.shape[:3]
                or min(images.shape[1:3]) < self.cfg.crop):
            raise ValueError(
                f"composites must be images [k, H, W, 3] and masks [k, H, W] with sides >= "
                f"crop={self.cfg.crop}, got {list(images.shape)} and {list(masks.shape)}"
            )
        mask = torch.from_numpy(np.asarray(masks, np.float32))[:, None]  # [k, 1, H, W]
        self.pool = torch.cat([to_tensor(images), mask], dim=1)
        self.pool_id = pool_id

    @staticmethod
    def _crop(image: torch.Tensor, side: int, rng: torch.Generator) -> torch.Tensor:
        h, w = image.shape[-2:]
        top = int(torch.randint(h - side + 1, (), generator=rng))
        left = int(torch.randint(w - side + 1, (), generator=rng))
        return image[..., top : top + side, left : left + side]

    def real_batch(self, rng: torch.Generator) -> torch.Tensor:
        picks = torch.randint(len(self.real), (self.cfg.batch_size,), generator=rng).tolist()
        return torch.stack([self._crop(self.real[i], self.cfg.crop, rng) for i in picks])

    def composite_batch(self, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.pool is not None, "refresh() first"
        picks = torch.randint(len(self.pool), (self.cfg.batch_size,), generator=rng).tolist()
        crops = torch.stack([self._crop(self.pool[i], self.cfg.crop, rng) for i in picks])
        return crops[:, :3], crops[:, 3:]  # [B, 3, c, c], [B, 1, c, c]


# ----------------------------------------------------------------------- training


def _public_state(cfg: RefinerConfig, full: dict[str, Any]) -> dict[str, Any]:
    keep = ("refiner", "critic", "step", "metrics")
    return {"config": cfg.to_dict(), **{k: full[k] for k in keep}}


def train_refiner(
    real: Sequence[np.ndarray],
    composites: Composites,
    cfg: RefinerConfig,
    run_dir: Path,
    init: dict[str, Any] | None = None,
    progress: bool = True,
    on_step: OnStep | None = None,
) -> dict[str, Any]:
    """Train a refiner for `cfg.steps` steps, resuming from `run_dir`'s checkpoint if any.

    real: uint8 photos [H, W, 3], sides >= cfg.crop (sizes may differ).
    composites: `(k, rng) -> (images uint8 [k, H, W, 3], masks float32 [k, H, W] in [0, 1])`.
    init: a state this function returned (the base refiner) to start from; ignored on resume.
    on_step: called as `on_step(step, total, metrics)` every `cfg.log_every` steps and at the end.
    Returns {"config", "refiner", "critic", "step", "metrics"}, fit for `torch.save`.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINTS_DIR / LATEST_CHECKPOINT
    saved = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    if saved is not None:
        _check_shapes(cfg, saved, "checkpoint")
        if saved["step"] >= cfg.steps:  # finished: nothing to do
            return _public_state(cfg, saved)

    # Networks, optimisers and the one torch RNG every draw of the loop comes from.
    device = pick_device()
    with torch.random.fork_rng(devices=[]):  # weight init must not disturb the caller's RNG
        torch.manual_seed(cfg.seed)
        refiner, critic = build_refiner(cfg)
    opt_r = torch.optim.Adam(refiner.parameters(), cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_c = torch.optim.Adam(critic.parameters(), cfg.lr, betas=(cfg.beta1, cfg.beta2))
    rng = torch.Generator().manual_seed(cfg.seed)
    step, metrics = 0, {}

    # Restore: our own checkpoint (resume) wins over `init` (fine-tune from the base).
    if saved is not None:
        refiner.load_state_dict(saved["refiner"])
        critic.load_state_dict(saved["critic"])
        opt_r.load_state_dict(saved["opt_refiner"])
        opt_c.load_state_dict(saved["opt_critic"])
        rng.set_state(saved["rng"])
        step, metrics = saved["step"], saved["metrics"]
    elif init is not None:
        _check_shapes(cfg, init, "init state")
        refiner.load_state_dict(init["refiner"])
        critic.load_state_dict(init["critic"])
    refiner.to(device).train()
    critic.to(device).train()
    for opt in (opt_r, opt_c):  # optimiser state follows its parameters' device
        for param_state in opt.state.values():
            for key, value in param_state.items():
                if torch.is_tensor(value) and key != "step":
                    param_state[key] = value.to(device)
    crops = _Crops(real, composites, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", cfg.to_dict())

    def checkpoint() -> None:
        save_checkpoint({
            "config": cfg.to_dict(), "step": step, "metrics": metrics,
            "refiner": refiner.state_dict(), "critic": critic.state_dict(),
            "opt_refiner": opt_r.state_dict(), "opt_critic": opt_c.state_dict(),
            "rng": rng.get_state(), "git_commit": git_commit(),
        }, ckpt_path)

    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="refiner", unit="step")
    while step < cfg.steps:
        crops.refresh(step)

        # Critic: real crops against refined composites, both augmented, plus the penalty.
        for _ in range(cfg.n_critic):
            real_b = crops.real_batch(rng).to(device)
            comp, mask = (t.to(device) for t in crops.composite_batch(rng))
            with torch.no_grad():
                fake = refiner(comp, mask)
            real_aug = diff_augment(real_b, cfg.augment, rng)
            fake_aug = diff_augment(fake, cfg.augment, rng)
            real_s, fake_s = critic(real_aug), critic(fake_aug)
            pen = gradient_penalty(critic, real_aug, fake_aug, cfg.gp_weight, rng)
            loss_c = critic_loss("wgan", real_s, fake_s) + pen.penalty
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()

        # Refiner: fool the critic while staying close to the composite (self-regularisation).
        comp, mask = (t.to(device) for t in crops.composite_batch(rng))
        refined = refiner(comp, mask)
        adv = generator_loss("wgan", critic(diff_augment(refined, cfg.augment, rng)))
        l1 = (refined - comp).abs().mean()
        loss_r = adv + cfg.l1_weight * l1
        opt_r.zero_grad(set_to_none=True)
        loss_r.backward()
        opt_r.step()
        step += 1
        bar.update(1)

        # Log (the .item() syncs happen only here), then checkpoint.
        if step % cfg.log_every == 0 or step == cfg.steps:
            metrics = {
                "critic_loss": loss_c.item(),
                "wasserstein": (real_s.mean() - fake_s.mean()).item(),
                "gradient_penalty": pen.penalty.item(),
                "refiner_adv": adv.item(),
                "l1": l1.item(),
                "l1_grey_levels": l1.item() * 127.5,  # mean |correction| in uint8 steps
            }
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
            bar.set_postfix(
                w=f"{metrics['wasserstein']:.3f}", l1=f"{metrics['l1_grey_levels']:.2f}"
            )
            if on_step is not None:
                on_step(step, cfg.steps, metrics)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()
    bar.close()
    if step == 0:
        checkpoint()  # a 0-step run still leaves a record
    refiner.cpu().eval()
    critic.cpu().eval()
    return {
        "config": cfg.to_dict(), "step": step, "metrics": metrics,
        "refiner": refiner.state_dict(), "critic": critic.state_dict(),
    }


# ----------------------------------------------------------------------- export


def export_refiner(state: dict[str, Any], path: Path) -> float:
    """Write the refiner of `state` to `path` as ONNX and return the parity.

    Inputs "composite" [N, 3, H, W] and "mask" [N, 1, H, W], output "image"; N, H and W are
    dynamic. Parity is the max abs difference between torch and onnxruntime at PARITY_SIZES;
    above PARITY_LIMIT the export fails and `path` is left as it was.
    """
    path = Path(path)
    refiner = refiner_from_state(state).cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        axes = {0: "batch", 2: "height", 3: "width"}
        torch.onnx.export(
            refiner,
            (torch.zeros(1, 3, 32, 32), torch.zeros(1, 1, 32, 32)),
            tmp,
            input_names=["composite", "mask"],
            output_names=["image"],
            dynamic_axes={"composite": axes, "mask": axes, "image": axes},
            opset_version=OPSET,
            dynamo=False,
        )
        session = open_session(tmp)
        rng = np.random.default_rng(0)
        parity = 0.0
        for h, w in PARITY_SIZES:
            comp = rng.uniform(-1, 1, (2, 3, h, w)).astype(np.float32)
            mask = (rng.uniform(0, 1, (2, 1, h, w)) > 0.5).astype(np.float32)
            with torch.no_grad():
                expected = refiner(torch.from_numpy(comp), torch.from_numpy(mask)).numpy()
            (got,) = session.run(None, {"composite": comp, "mask": mask})
            parity = max(parity, float(np.abs(expected - got).max()))
        if not parity <= PARITY_LIMIT:
            raise ValueError(
                f"ONNX parity {parity:.2e} exceeds {PARITY_LIMIT:.0e}; export rejected"
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return parity
