"""The model repository: the on-disk format that training publishes and the service reads.

Layout (Triton-style integer versions, newest serves unless a request pins one)::

    models/<name>/<version>/<artifact files> + card.json

`<name>` is a SKU, or one of the reserved entries `_labeller` (the YOLO labeller) and
`_base` (the pretrained generator/critic checkpoint fine-tunes start from). SKUs cannot
start with `_`, so reserved names never collide with them.

A version appears atomically: everything is written and fsynced into a hidden staging
folder beside the versions, then renamed into place. Readers ignore hidden folders, so a
crash mid-publish leaves nothing visible, and a rename never replaces an existing version,
so versions are immutable. A staging folder is named after its writer (host and pid), so
`remove_abandoned_staging` (the job runner calls it when it takes over) can delete what a
killed writer left without touching a publish still in progress.

This module owns the names of every file the repository and a training run hold; the cards'
fields are typed in `service.core.cards`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
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

# Hidden folders written before a rename into place: `.staging-<host>-<pid>-<random>`.
STAGING_PREFIX = ".staging-"
# A staging folder untouched this long is abandoned whoever wrote it (a publish takes seconds;
# another host's writer cannot be asked whether it still runs).
STALE_STAGING_SECONDS = 3600.0
# The errors of a full volume or an exhausted quota.
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

C = TypeVar("C", bound=Card)
SKU_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ModelNotFound(LookupError):
    """The repository has no such model or version."""


class ModelUnreadable(RuntimeError):
    """A published version's files cannot be read or loaded (a corrupt or cut-short copy):
    the server's state is at fault, not the request."""


class RepositoryFull(OSError):
    """The model repository's volume is full (or over quota): nothing was published."""


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

    @property
    def stamp(self) -> tuple[int, int]:
        """Which copy of the version this is. A version folder is never changed, but a model
        removed and published again reuses its numbers: the new folder has another inode.
        (0, 0) when the folder is gone."""
        try:
            stat = self.path.stat()
        except OSError:
            return (0, 0)
        return (stat.st_ino, stat.st_mtime_ns)


def staging_folder(parent: Path) -> Path:
    """A new hidden folder in `parent` to write into before renaming it into place, named after
    its writer so that `staging_abandoned` can tell a killed writer's leftovers from work in
    progress."""
    owner = f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=owner, dir=parent))


def process_alive(pid: int) -> bool:
    """Whether process `pid` (of this host) runs; a zombie (exited, not yet reaped) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:  # "pid (comm) S ...": the state follows the last parenthesis
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def staging_abandoned(path: Path, now: float | None = None) -> bool:
    """Whether staging folder `path` was left by a writer that is gone: a process of this host
    that no longer runs, or any writer after STALE_STAGING_SECONDS without a change."""
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_STAGING_SECONDS:
        return True
    host, pid, _ = (path.name[len(STAGING_PREFIX):].rsplit("-", 2) + ["", ""])[:3]
    return host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))


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

    def remove_abandoned_staging(self) -> list[Path]:
        """Delete the staging folders killed writers left (publishes, job uploads) in every
        model's folder; returns them. A crash mid-publish shows nothing, but its half-written
        files would otherwise hold disk space forever."""
        if not self.root.is_dir():
            return []
        removed = []
        for folder in self.root.iterdir():
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            for staging in folder.glob(STAGING_PREFIX + "*"):
                if staging.is_dir() and staging_abandoned(staging):
                    shutil.rmtree(staging, ignore_errors=True)
                    removed.append(staging)
        return removed

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
        each other because `os.rename` onto an existing non-empty folder fails. A full volume
        raises RepositoryFull, with nothing published and the staging folder removed.
        """
        if name not in RESERVED:
            validate_sku(name)
        folder = self.root / name
        staging: Path | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            staging = staging_folder(folder)
            return self._publish_from(staging, folder, name, files, card)
        except OSError as e:
            if e.errno in FULL_ERRNOS:
                raise self._full(name, e) from e
            raise
        finally:
            if staging is not None and staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _full(self, name: str, error: OSError) -> RepositoryFull:
        return RepositoryFull(
            f"disk full: the model repository {self.root} has no space left "
            f"({error.strerror or error}) to publish {name}; nothing was published, the "
            "previous version keeps serving")

    def _publish_from(self, staging: Path, folder: Path, name: str,
                      files: dict[str, str | os.PathLike[str]], card: Card) -> ModelVersion:
        """Fill `staging` with `files` and the card, then rename it to the next version."""
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
