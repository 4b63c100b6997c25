"""Crash-safe file writes: a reader sees the old file or the new one, never half of one.

The data goes to a temporary file beside the target, is fsynced, renamed over the target, and
the folder is fsynced too, so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of folder `path` (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data` atomically and durably."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Replace `path` with `data` as indented, key-sorted JSON, atomically and durably."""
    write_bytes_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode())


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON object from `path`; {} when the file is missing or not JSON."""
    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
