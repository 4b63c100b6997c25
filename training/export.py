"""ONNX export of the generator, parity-checked against torch, and publication to `models/`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.core.cards import BaseCard, GeneratorCard
from service.core.gan_session import GeneratorSession, latents
from service.core.repository import (
    BASE,
    BASE_FILE,
    BASE_REFINER_FILE,
    GENERATOR_FILE,
    ModelRepository,
    ModelVersion,
    validate_sku,
)
from training.checkpoint import load_checkpoint
from training.networks import Generator

PARITY_LIMIT = 1e-3  # max abs difference between torch and onnxruntime on the same z
OPSET = 17


def generator_from_checkpoint(state: dict[str, Any], ema: bool = True) -> Generator:
    """The (EMA) generator of a checkpoint, in eval mode on the CPU."""
    generator = Generator(**state["generator_args"])
    generator.load_state_dict(state["generator_ema" if ema else "generator"])
    return generator.eval()


def export_onnx(generator: Generator, path: Path, parity_batch: int = 8) -> float:
    """Write `generator` to `path` (z [N, z_dim] -> image [N, 3, R, R]) and return the parity.

    Parity is the max abs difference between torch and onnxruntime on the same latents; above
    PARITY_LIMIT the export fails and nothing is left at `path`.
    """
    generator = generator.cpu().eval()
    dummy = torch.zeros(2, generator.z_dim)
    torch.onnx.export(
        generator,
        (dummy,),
        str(path),
        input_names=["z"],
        output_names=["image"],
        dynamic_axes={"z": {0: "batch"}, "image": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    z = latents(parity_batch, generator.z_dim, seed=0)
    with torch.no_grad():
        expected = generator(torch.from_numpy(z)).numpy()
    got = GeneratorSession(path).run(z)
    parity = float(np.abs(expected - got).max())
    if not parity <= PARITY_LIMIT:
        path.unlink(missing_ok=True)
        raise ValueError(f"ONNX parity {parity:.2e} exceeds {PARITY_LIMIT:.0e}; export rejected")
    return parity


def publish_generator(
    checkpoint: str | Path,
    sku: str,
    models: str | Path,
    card: dict[str, Any] | None = None,
    extra_files: dict[str, Path] | None = None,
) -> ModelVersion:
    """Export a run's EMA generator and publish it as the SKU's next version.

    The card holds the run's config, step and `extra` (sku, parent, data fingerprint), then
    `card`'s fields (GeneratorCard's)."""
    validate_sku(sku)
    state = load_checkpoint(checkpoint)
    generator = generator_from_checkpoint(state)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / GENERATOR_FILE
        parity = export_onnx(generator, onnx_path)
        full_card = GeneratorCard(**{
            "config": state["config"],
            "iterations": state["step"],
            "generator_args": state["generator_args"],
            "onnx_parity_max_abs": parity,
            "git_commit": state.get("git_commit"),
            **state.get("extra", {}),
            **(card or {}),
        })
        files = {GENERATOR_FILE: onnx_path, **(extra_files or {})}
        return ModelRepository(models).publish(sku, files, full_card)


def publish_base(checkpoint: str | Path, models: str | Path, card: dict[str, Any],
                 refiner: dict[str, Any] | None = None) -> ModelVersion:
    """Publish a pretrained run as the base fine-tunes start from (weights only, no optimiser),
    with the pretrained refiner (`training.refiner.train_refiner`'s state) when given."""
    state = load_checkpoint(checkpoint)
    keep = (
        "config",
        "step",
        "generator",
        "critic",
        "generator_ema",
        "generator_args",
        "critic_args",
        "git_commit",
        "extra",
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / BASE_FILE
        torch.save({k: state[k] for k in keep if k in state}, path)
        files = {BASE_FILE: path}
        if refiner is not None:
            files[BASE_REFINER_FILE] = Path(tmp) / BASE_REFINER_FILE
            torch.save(refiner, files[BASE_REFINER_FILE])
            card = {**card, "refiner": {"config": refiner["config"], "steps": refiner["step"],
                                        "metrics": refiner["metrics"]}}
        full_card = BaseCard(config=state["config"], iterations=state["step"], **card)
        return ModelRepository(models).publish(BASE, files, full_card)
