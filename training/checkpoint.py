"""Checkpoints: state dicts, optimiser states, step, RNG and the config; never pickled code.

A checkpoint is written to a temporary file and renamed into place, so a run killed mid-save
keeps its previous checkpoint intact.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from service.core.repository import CHECKPOINTS_DIR, LATEST_CHECKPOINT


def git_commit() -> str | None:
    """The commit the code runs from, for the record; None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write `state` to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint` (tensors and plain data only)."""
    path = Path(path)
    if path.is_dir():
        path = latest_checkpoint(path) or path / CHECKPOINTS_DIR / LATEST_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=device, weights_only=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The run's newest checkpoint, or None when it has none yet."""
    path = Path(run_dir) / CHECKPOINTS_DIR / LATEST_CHECKPOINT
    return path if path.is_file() else None
