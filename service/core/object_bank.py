"""The compose recipe's object bank: every product cut out of a SKU's photos, the empty bin, and
what the photos say about arrangements (objects per photo, where the floor is, sensor noise).

It is published inside the SKU's model version as plain files under `BANK_DIR` (one RGBA PNG
per cut-out, `EMPTY_FILE` and `BANK_INDEX`), so the service composes with numpy and OpenCV
only. `training.cutouts` builds it from the photos.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

BANK_DIR = "bank"  # folder of a compose version
BANK_INDEX = "bank.json"
EMPTY_FILE = "empty.png"


@dataclass(frozen=True)
class BankObject:
    """One product as it appeared in one photo, at the bank's scale."""

    cls: int  # class id, as in the photos' labels
    pixels: np.ndarray  # uint8 [h, w, 3]
    alpha: np.ndarray  # float32 [h, w] in [0, 1]: how much of each pixel is product
    source: str = ""  # the photo it was cut from
    occluded: float = 0.0  # fraction of its box that other boxes covered in that photo


@dataclass(frozen=True)
class ObjectBank:
    """What `compose` builds new arrangements from."""

    objects: list[BankObject]
    empty: np.ndarray  # uint8 [H, W, 3]: the bin without products, at the bank's scale
    names: list[str]  # class names; a class id indexes them
    counts: list[int]  # objects in each photo
    floor: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # x0 y0 x1 y1, fractions
    noise: float = 0.0  # sensor noise of the photos, grey levels (sd)
    empty_source: str = "photos"  # "photos" (estimated) or "upload"
    # Each photo's colour cast (gain per channel against their median), divided out of the
    # cut-outs and the empty bin; a composite takes one of them back on.
    gains: list[list[float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.objects:
            raise ValueError("the object bank holds no objects: the photos have no labelled "
                             "products to cut out")

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the bank's scale: the photos' working size."""
        return self.empty.shape[:2]

    def statistics(self) -> dict[str, Any]:
        """The bank in figures, for the card."""
        per_class: dict[str, int] = {}
        for o in self.objects:
            name = self.names[o.cls] if o.cls < len(self.names) else str(o.cls)
            per_class[name] = per_class.get(name, 0) + 1
        return {
            "objects": len(self.objects),
            "per_class": per_class,
            "photos": len(self.counts),
            "objects_per_photo": [min(self.counts), max(self.counts)] if self.counts else None,
            "size": [int(self.shape[1]), int(self.shape[0])],
            "floor": [round(v, 4) for v in self.floor],
            "noise": round(self.noise, 3),
            "empty": self.empty_source,
            "colour_casts": [round(float(np.min(self.gains)), 3),
                             round(float(np.max(self.gains)), 3)] if self.gains else None,
        }

    def save(self, folder: str | Path) -> Path:
        """Write the bank into `folder / BANK_DIR`; return that folder."""
        root = Path(folder) / BANK_DIR
        root.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.empty).save(root / EMPTY_FILE)
        entries = []
        for i, o in enumerate(self.objects):
            name = f"object-{i:04d}.png"
            rgba = np.dstack([o.pixels, np.rint(o.alpha * 255).astype(np.uint8)])
            Image.fromarray(rgba, "RGBA").save(root / name)
            entries.append({"file": name, "cls": o.cls, "source": o.source,
                            "occluded": round(o.occluded, 4)})
        index = {"names": self.names, "counts": self.counts, "floor": list(self.floor),
                 "noise": self.noise, "empty": EMPTY_FILE, "empty_source": self.empty_source,
                 "gains": self.gains, "objects": entries, **self.extra}
        (root / BANK_INDEX).write_text(json.dumps(index, indent=1))
        return root

    @classmethod
    def load(cls, folder: str | Path) -> ObjectBank:
        """The bank `save` wrote into `folder` (a model version). OSError or ValueError when
        a file is missing or unreadable."""
        root = Path(folder) / BANK_DIR
        index = json.loads((root / BANK_INDEX).read_text())
        known = {"names", "counts", "floor", "noise", "empty", "empty_source", "gains",
                 "objects"}
        objects = []
        for entry in index["objects"]:
            with Image.open(root / entry["file"]) as image:
                rgba = np.asarray(image.convert("RGBA"))
            objects.append(BankObject(int(entry["cls"]), np.ascontiguousarray(rgba[..., :3]),
                                      rgba[..., 3].astype(np.float32) / 255.0,
                                      entry.get("source", ""), float(entry.get("occluded", 0))))
        with Image.open(root / index["empty"]) as image:
            empty = np.asarray(image.convert("RGB"))
        return cls(objects, empty, list(index["names"]), [int(c) for c in index["counts"]],
                   tuple(float(v) for v in index["floor"]), float(index.get("noise", 0.0)),
                   index.get("empty_source", "photos"), index.get("gains", []),
                   {k: v for k, v in index.items() if k not in known})
