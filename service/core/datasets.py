"""Labelled datasets on disk: read a folder of images, write images + labels ready to train on.

What `write_dataset` hands out (and `/generate?format=zip` zips)::

    out/images/<stem>.png
    out/labels/<stem>.txt        YOLO rows: class cx cy w h (normalised), 5 columns
    out/confidences/<stem>.txt   the labeller's confidence of each row, same order
    out/annotations.json         COCO detection JSON for the set, `score` on each annotation
    out/data.yaml                `yolo train data=out/data.yaml` trains on it as is

Confidences are not a 6th YOLO column because Ultralytics rejects such label files ("labels
require 5 columns") and silently drops the image. `data.yaml` has no `path:` key: Ultralytics
then resolves `train`/`val` against the yaml's own folder, so the set still trains after it
is moved or unzipped anywhere (a relative `path:` would resolve against the working directory
or Ultralytics' datasets dir, an absolute one breaks on moving).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.core import png
from service.core.labeller_session import Detections, LabellerSession
from service.core.repository import first_line
from service.core.yolo import write_data_yaml, write_rows

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    """An image by its suffix; hidden files (macOS' "._x.png" resource forks) are not."""
    return (path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
            and path.is_file())


def image_files(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Image files in `folder`, sorted; FileNotFoundError/ValueError if there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if is_image_file(p))
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def first_image_side(folder: str | os.PathLike[str]) -> int:
    """The longer side, in pixels, of the first image under `folder` (from its header only)."""
    with Image.open(image_files(folder, recursive=True)[0]) as image:
        return max(image.size)


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image fully, as RGB, upright per its EXIF orientation (as photos are labelled);
    ValueError naming the file if it is not a readable image or too large."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now so truncated files fail here, naming the file
            return ImageOps.exif_transpose(image).convert("RGB")
    except Image.DecompressionBombError as err:
        raise ValueError(f"cannot read image {path}: too large ({first_line(err)})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {first_line(err)}") from None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3] (see `open_image`)."""
    return np.asarray(open_image(path))


def read_images(
    folder: str | os.PathLike[str], recursive: bool = False
) -> tuple[list[np.ndarray], list[Path]]:
    """Every image in `folder` as uint8 RGB arrays, with their paths."""
    files = image_files(folder, recursive)
    return [read_image(f) for f in files], files


def class_names(
    names: dict[int, str] | Sequence[str], single_class_name: str | None = None
) -> list[str]:
    """The class list a dataset is written with: the labeller's, or one class for a SKU."""
    if single_class_name is not None:
        return [single_class_name]
    if isinstance(names, dict):
        return [names[i] for i in sorted(names)]
    return list(names)


def _coco_image(image_id: int, file_name: str, shape: tuple[int, int]) -> dict:
    return {"id": image_id, "file_name": file_name, "height": shape[0], "width": shape[1]}


def coco_json(
    file_names: list[str],
    detections: list[Detections],
    names: list[str],
    single_class: bool = False,
) -> dict:
    """COCO detection JSON: category ids are class index + 1 (COCO reserves 0)."""
    images, annotations = [], []
    for image_id, (file_name, det) in enumerate(zip(file_names, detections, strict=True), 1):
        images.append(_coco_image(image_id, file_name, det.shape))
        for box, cls, conf in zip(det.boxes.tolist(), det.cls.tolist(), det.conf.tolist(),
                                  strict=True):
            x1, y1, x2, y2 = box
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": (0 if single_class else int(cls)) + 1,
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "area": round((x2 - x1) * (y2 - y1), 2),
                "iscrowd": 0,
                "score": round(float(conf), 5),
            })
    categories = [{"id": i + 1, "name": n, "supercategory": "product"} for i, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_dataset(
    out: str | os.PathLike[str],
    images: Sequence[np.ndarray] | np.ndarray,
    detections: list[Detections],
    names: dict[int, str] | Sequence[str],
    stems: Sequence[str] | None = None,
    single_class_name: str | None = None,
) -> Path:
    """Write `images` (uint8 RGB HWC) with their labels as a YOLO + COCO dataset; returns `out`.

    `names` are the labeller's classes; with `single_class_name` (e.g. the SKU) every box is
    written as class 0 of that one name. `stems` name the files (default `000000`, ...).
    """
    if len(images) != len(detections):
        raise ValueError(f"{len(images)} images but {len(detections)} detection sets")
    stems = list(stems) if stems is not None else [f"{i:06d}" for i in range(len(images))]
    if len(stems) != len(images) or len(set(stems)) != len(stems):
        raise ValueError("stems must be unique, one per image")
    classes = class_names(names, single_class_name)
    single = single_class_name is not None
    out = Path(out)
    for sub in ("images", "labels", "confidences"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    file_names = []
    for encoded, det, stem in zip(png.encode_all(images), detections, stems, strict=True):
        file_name = f"images/{stem}.png"
        (out / file_name).write_bytes(encoded)
        file_names.append(file_name)
        rows = det.yolo_rows()
        if single:
            rows[:, 0] = 0
        write_rows(out / "labels" / f"{stem}.txt", rows)
        (out / "confidences" / f"{stem}.txt").write_text(
            "".join(f"{c:.5f}\n" for c in det.conf.tolist())
        )

    coco = coco_json(file_names, detections, classes, single_class=single)
    (out / "annotations.json").write_text(json.dumps(coco))
    write_data_yaml(out, classes, comment="YOLO dataset written by boxgen; paths are "
                    "relative to this file's folder")
    return out


def label_folder(
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    models: str | os.PathLike[str],
    conf: float = 0.25,
    iou: float = 0.45,
    version: int | None = None,
    single_class_name: str | None = None,
) -> Path:
    """Label every image in the folder `images` with the published labeller into `out`.

    What `boxgen label` runs, e.g. on a customer's own photos.
    """
    session = LabellerSession.from_repository(models, version, conf=conf, iou=iou)
    arrays, files = read_images(images)
    detections = session.label(arrays)
    return write_dataset(out, arrays, detections, session.classes, [f.stem for f in files],
                         single_class_name)
