"""Local generation: run a published ONNX generator and write PNGs."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from service.generator import GeneratorSession
from service.repository import ModelRepository


def generate_images(
    sku: str,
    n: int,
    out: Path,
    models: Path,
    seed: int | None = None,
    version: int | None = None,
) -> list[Path]:
    """Write `n` images of `sku` to `out/images/` and return their paths."""
    model = ModelRepository(models).resolve(sku, version)
    images = GeneratorSession(model.file("generator.onnx")).sample(n, seed)
    folder = Path(out) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{sku}-v{model.version}-{i:05d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
