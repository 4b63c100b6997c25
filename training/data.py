"""Image folders in, training tensors out: YOLO-layout corpora or plain folders of photos.

A folder is either in YOLO layout (`images/` with optional split subfolders such as
`images/train`, labels in the mirrored `labels/` tree, class names in `data.yaml`) or a plain
folder of images (labels, if any, are `.txt` files of the same stem beside them). Images of any
size are resized to a square training resolution R:

- `stretch` (default, as the thesis did 1280×720 -> 256×256): normalised YOLO boxes are
  unchanged by a stretch.
- `letterbox`: scale to fit, keep the aspect ratio, pad with grey; boxes are mapped into the
  padded square.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from service.core.datasets import IMAGE_SUFFIXES, is_image_file, open_image
from service.core.yolo import label_path, read_names, read_rows
from training.render import CLASSES

FITS = ("stretch", "letterbox")
PAD_GREY = 114  # Ultralytics' letterbox grey


@dataclass
class ImageSet:
    """Images at one square resolution with their YOLO labels."""

    images: torch.Tensor  # [N, 3, R, R] float32 in [-1, 1]
    labels: list[np.ndarray]  # per image [k, 5]: cls, cx, cy, w, h (normalised to the R×R image)
    paths: list[Path]  # the image files, in the order of `images`
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)


def find_images(root: Path) -> tuple[list[Path], list[Path | None]]:
    """Image files under `root` and, for each, the label file it would have (or None)."""
    if (root / "images").is_dir():
        images = sorted(p for p in (root / "images").rglob("*") if is_image_file(p))
        label_of = [label_path(root, p) for p in images]
    else:
        images = sorted(p for p in root.iterdir() if is_image_file(p))
        label_of = [p.with_suffix(".txt") for p in images]
    return images, [p if p.is_file() else None for p in label_of]


def _fit(img: Image.Image, labels: np.ndarray, resolution: int, fit: str
         ) -> tuple[Image.Image, np.ndarray]:
    """Resize to resolution² by `fit`, mapping the normalised boxes along."""
    if fit == "stretch":
        return img.resize((resolution, resolution), Image.Resampling.BICUBIC), labels
    w, h = img.size
    scale = resolution / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = (resolution - nw) // 2, (resolution - nh) // 2
    canvas = Image.new("RGB", (resolution, resolution), (PAD_GREY,) * 3)
    canvas.paste(img.resize((nw, nh), Image.Resampling.BICUBIC), (left, top))
    boxes = labels.copy()
    boxes[:, 1] = (labels[:, 1] * nw + left) / resolution
    boxes[:, 2] = (labels[:, 2] * nh + top) / resolution
    boxes[:, 3] = labels[:, 3] * nw / resolution
    boxes[:, 4] = labels[:, 4] * nh / resolution
    return canvas, boxes


def load_images(path: str | Path, resolution: int, fit: str = "stretch", min_images: int = 1,
                max_images: int | None = None) -> ImageSet:
    """Load every image under `path` at `resolution`² (see the module docstring for layouts).

    Raises FileNotFoundError for a missing folder and ValueError, naming the file, for an
    unreadable image or label, a label class outside data.yaml's names, or an image count
    outside [min_images, max_images].
    """
    root = Path(path)
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; choose one of {', '.join(FITS)}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    files, label_files = find_images(root)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    if len(files) < min_images:
        raise ValueError(f"{root} holds {len(files)} images; at least {min_images} needed")
    if max_images is not None and len(files) > max_images:
        raise ValueError(f"{root} holds {len(files)} images; at most {max_images} allowed")
    names = read_names(root, required=False)
    pixels = np.empty((len(files), resolution, resolution, 3), np.uint8)  # [N, R, R, 3]
    labels = []
    for i, (file, label_file) in enumerate(zip(files, label_files, strict=True)):
        boxes = read_rows(label_file) if label_file else np.zeros((0, 5))
        if names is not None and len(boxes) and boxes[:, 0].max() >= len(names):
            raise ValueError(f"{label_file}: class {int(boxes[:, 0].max())} is not in "
                             f"data.yaml's {len(names)} names")
        img = open_image(file)
        img, boxes = _fit(img, boxes, resolution, fit)
        pixels[i] = np.asarray(img)
        labels.append(boxes)
    if names is None:  # no data.yaml: the built-in classes, extended if labels use more
        top = max((int(b[:, 0].max()) + 1 for b in labels if len(b)), default=0)
        names = CLASSES + tuple(f"class{i}" for i in range(len(CLASSES), top))
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return ImageSet(images.contiguous(), labels, files, tuple(names))


def data_fingerprint(paths: Iterable[str | Path]) -> str:
    """sha256 identifying the files' contents: over each file's digest, sorted by name."""
    digest = hashlib.sha256()
    for p in sorted((Path(p) for p in paths), key=lambda p: (p.name, str(p))):
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest()
