"""The YOLO dataset format, read and written in one place: label rows and `data.yaml` names.

A label file holds one row per object, `class cx cy w h`, the box centre and size normalised
to the image (Ultralytics' detection format); segment rows (`class x1 y1 x2 y2 ...`) are read
as their bounding box. `data.yaml` names the classes, as a list or an `{id: name}` mapping.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DATA_YAML = "data.yaml"


def label_path(folder: str | os.PathLike[str], image: str | os.PathLike[str]) -> Path:
    """The label file of `image` in the YOLO folder `folder` (images/a/b.png -> labels/a/b.txt)."""
    rel = Path(image).relative_to(Path(folder) / "images")
    return Path(folder) / "labels" / rel.with_suffix(".txt")


def read_rows(path: str | os.PathLike[str], missing_ok: bool = False) -> np.ndarray:
    """YOLO rows [k, 5] of a label file, checked; a missing file is an error unless
    `missing_ok` (then, like an empty file, no objects)."""
    path = Path(path)
    if missing_ok and not path.is_file():
        return np.zeros((0, 5), np.float64)
    return parse_rows(path.read_text(), str(path))


def parse_rows(text: str, source: str) -> np.ndarray:
    """YOLO rows [k, 5] of a label file's `text`; ValueError naming `source` and the line."""
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(x) for x in line.split()]
        except ValueError:
            raise ValueError(f"{source}:{n}: not numbers: {line.strip()[:60]!r}") from None
        if len(values) == 5:
            row = values
        elif len(values) >= 7 and len(values) % 2 == 1:  # segment: cls x1 y1 x2 y2 ...
            xs, ys = values[1::2], values[2::2]
            row = [values[0], (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2,
                   max(xs) - min(xs), max(ys) - min(ys)]
        else:
            raise ValueError(f"{source}:{n}: expected 'cls cx cy w h', got {len(values)} values")
        if row[0] < 0 or row[0] != int(row[0]) or not all(0 <= v <= 1 for v in row[1:]):
            raise ValueError(
                f"{source}:{n}: class must be an integer >= 0 and box values in [0, 1]")
        rows.append(row)
    return np.array(rows, np.float64).reshape(-1, 5)


def format_rows(rows: np.ndarray) -> str:
    """The text of a label file: one `class cx cy w h` line per row, 6 decimals."""
    return "".join(f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n"
                   for r in np.asarray(rows).reshape(-1, 5))


def write_rows(path: str | os.PathLike[str], rows: np.ndarray) -> None:
    Path(path).write_text(format_rows(rows))


def xyxy(rows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rows as pixel corner boxes x0, y0, x1, y1 for an image of `shape` (H, W).  # [k, 4]"""
    h, w = shape
    rows = np.asarray(rows, np.float64).reshape(-1, 5)
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)


def read_names(folder: str | os.PathLike[str], required: bool = True) -> list[str] | None:
    """Class names from `folder/data.yaml` (or `data.yml`), in id order.

    Without one: FileNotFoundError, or None when not `required`."""
    folder = Path(folder)
    spec = next((folder / n for n in (DATA_YAML, "data.yml") if (folder / n).is_file()), None)
    if spec is None:
        if required:
            raise FileNotFoundError(f"{folder} has no {DATA_YAML} (a YOLO folder needs one)")
        return None
    try:
        names = (yaml.safe_load(spec.read_text()) or {}).get("names")
    except (yaml.YAMLError, AttributeError) as err:
        problem = " ".join(str(err).split())[:200]  # YAML errors span lines
        raise ValueError(f"{spec}: not a valid data.yaml ({problem})") from None
    if isinstance(names, dict) and names:
        if sorted(names) != list(range(len(names))):
            raise ValueError(f"{spec}: names must be numbered 0..{len(names) - 1}")
        return [str(names[i]) for i in range(len(names))]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise ValueError(f"{spec} has no class names ('names:' list or mapping)")


def write_data_yaml(folder: str | os.PathLike[str], names: Sequence[str],
                    train: str = "images", val: str = "images", path: Path | None = None,
                    comment: str | None = None) -> Path:
    """`folder/data.yaml` that Ultralytics trains on. Without `path` it resolves `train` and
    `val` against the yaml's own folder, so the set trains wherever it is moved."""
    spec: dict[str, Any] = {"path": str(Path(path).resolve())} if path is not None else {}
    spec.update({"train": train, "val": val, "nc": len(names), "names": dict(enumerate(names))})
    text = yaml.safe_dump(spec, sort_keys=False)
    out = Path(folder) / DATA_YAML
    out.write_text(f"# {comment}\n{text}" if comment else text)
    return out


def pixel_boxes(rows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """YOLO rows as integer pixel boxes x0, y0, x1, y1 (end exclusive), clipped to the image
    of `shape` (height, width).  # [k, 4]"""
    h, w = shape
    boxes = np.rint(xyxy(np.asarray(rows, np.float64).reshape(-1, 5), shape)).astype(np.int64)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes
