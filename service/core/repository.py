"""The model repository: the on-disk format that training publishes and the service reads.

Layout (Triton-style integer versions, newest serves unless a request pins one)::

    models/<name>/<version>/<artifact files> + card.json

`<name>` is a SKU, or one of the reserved entries `_labeller` (the YOLO labeller) and
`_base` (the pretrained generator/critic checkpoint fine-tunes start from). SKUs cannot
start with `_`, so reserved names never collide with them.

A version appears atomically: everything is written and fsynced into a hidden temporary
folder beside the versions, then renamed into place. Readers ignore hidden folders, so a
crash mid-publish leaves nothing visible, and a rename never replaces an existing version,
so versions are immutable.

This module owns the names of every file the repository and a training run hold; the cards'
fields are typed in `service.core.cards`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from service.core.atomic import fsync_dir
from service.core.cards import Card

LABELLER = "_labeller"
BASE = "_base"
RESERVED = (LABELLER, BASE)
# Files of a version.
CARD = "card.json"
GENERATOR_FILE = "generator.onnx"  # a SKU's generator: z [N, z_dim] -> image [N, 3, R, R]
BASE_FILE = "base.pt"  # the pretrained generator and critic weights (torch)
LABELLER_FILE = "labeller.onnx"  # Ultralytics YOLO: images [N, 3, S, S] -> [N, 4 + nc, A]
SELECTION_FILE = "selection.npz"  # a SKU's novelty reference features
REFINER_FILE = "refiner.onnx"  # a compose SKU's refiner: composite, mask -> image
BASE_REFINER_FILE = "refiner.pt"  # the pretrained refiner and critic weights (torch)
# Files of a training run folder, which a resumed fine-tune (and the job runner) looks for.
CHECKPOINTS_DIR = "checkpoints"
LATEST_CHECKPOINT = "latest.pt"

C = TypeVar("C", bound=Card)
SKU_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ModelNotFound(LookupError):
    """The repository has no such model or version."""


class ModelUnreadable(RuntimeError):
    """A published version's files cannot be read or loaded (a corrupt or cut-short copy):
    the server's state is at fault, not the request."""


def first_line(error: BaseException) -> str:
    """An error's first line (or its type's name), for one-line messages."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def validate_sku(sku: str) -> str:
    """Return `sku` if it is a safe SKU name, else raise ValueError naming the rule."""
    if not SKU_PATTERN.fullmatch(sku) or ".." in sku:
        raise ValueError(
            f"sku {sku!r} is not a valid SKU name: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return sku


@dataclass(frozen=True)
class ModelVersion:
    """One published, immutable version of a model."""

    name: str
    version: int
    path: Path

    @property
    def card(self) -> dict[str, Any]:
        """The card as stored (JSON); ModelUnreadable when it is not a JSON object."""
        try:
            card = json.loads((self.path / CARD).read_text())
        except (OSError, ValueError) as e:
            raise self.unreadable(CARD, e) from None
        if not isinstance(card, dict):
            raise self.unreadable(CARD, ValueError("not a JSON object"))
        return card

    def read_card(self, kind: type[C]) -> C:
        """The card as the typed `kind` (GeneratorCard, LabellerCard, BaseCard)."""
        try:
            return kind.model_validate(self.card)
        except ValueError as e:  # pydantic's ValidationError
            raise self.unreadable(CARD, e) from None

    def unreadable(self, what: str, error: BaseException) -> ModelUnreadable:
        """The error that names this version and the file that failed."""
        return ModelUnreadable(
            f"model {self.name} version {self.version}: {what} cannot be read "
            f"({first_line(error)}); publish a good version, or pin another with `version`")

    def file(self, filename: str) -> Path:
        return self.path / filename


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(root)


class ModelRepository:
    """Read and publish models under one root folder."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def names(self) -> list[str]:
        """Every model name with at least one complete version (SKUs and reserved entries)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def skus(self) -> list[str]:
        return [n for n in self.names() if n not in RESERVED]

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / CARD).is_file()
        )

    def resolve(self, name: str, version: int | None = None) -> ModelVersion:
        """The pinned `version` of `name`, or its newest one."""
        if name not in RESERVED:
            validate_sku(name)
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"no model {name!r} in the repository")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version} (has {versions})")
        return ModelVersion(name, version, self.root / name / str(version))

    def publish(
        self, name: str, files: dict[str, str | os.PathLike[str]], card: Card
    ) -> ModelVersion:
        """Copy `files` (destination name -> source path) and `card` into a new version.

        The version number is one above the newest; concurrent publishers never overwrite
        each other because `os.rename` onto an existing non-empty folder fails.
        """
        if name not in RESERVED:
            validate_sku(name)
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
        try:
            for dest, src in files.items():
                (staging / dest).parent.mkdir(parents=True, exist_ok=True)  # bank/<file>
                shutil.copyfile(src, staging / dest)
            while True:
                # Every number-named folder counts, complete or not: renaming onto one fails.
                taken = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
                version = max(taken, default=0) + 1
                full_card = card.model_copy(update={
                    "name": name,
                    "version": version,
                    "created_at": card.created_at
                    or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "files": sorted(files),
                }).model_dump(mode="json", exclude_none=True)
                (staging / CARD).write_text(json.dumps(full_card, indent=2, sort_keys=True))
                _fsync_tree(staging)
                try:
                    os.rename(staging, folder / str(version))
                except OSError:
                    if (folder / str(version)).exists():
                        continue  # another publisher took this number; take the next
                    raise
                fsync_dir(folder)
                return ModelVersion(name, version, folder / str(version))
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
