"""Tests for training/copy_paste.py: cut objects out by their labels, paste them on empty bins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from service.core.datasets import read_image
from service.core.yolo import pixel_boxes, read_rows
from training.bins import bin_floor
from training.copy_paste import (
    cut_out,
    empty_bin,
    paste,
    turn,
    write_copy_paste,
)
from training.render import CLASSES, write_corpus

SIZE = (64, 64)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("real"), 1, 4, SIZE, seed=0, first_group=3)


def test_cut_out_keeps_every_labelled_object(real: Path) -> None:
    image = read_image(real / "images" / "g003_0000.png")
    rows = read_rows(real / "labels" / "g003_0000.txt")
    cutouts = cut_out(image, rows)
    assert [c.cls for c in cutouts] == rows[:, 0].astype(int).tolist()
    for cutout, (x0, y0, x1, y1) in zip(cutouts, pixel_boxes(rows, SIZE[::-1]), strict=True):
        assert cutout.pixels.shape[:2] == cutout.alpha.shape == (y1 - y0, x1 - x0)
        assert cutout.alpha.mean() > 0.3  # mostly object: the box is tight around it
        # The floor in the box corners is left behind (rotated products leave floor there).
        assert cutout.alpha.min() < 0.5


def test_pasted_pixels_lie_exactly_in_their_label_boxes(real: Path) -> None:
    image = read_image(real / "images" / "g003_0001.png")
    cutouts = cut_out(image, read_rows(real / "labels" / "g003_0001.txt"))
    cutouts = [turn(c, k, mirror=k % 2 == 0) for k, c in enumerate(cutouts)]
    rng = np.random.default_rng(7)
    background = empty_bin(SIZE, rng)
    result = paste(background, cutouts, rng)
    assert result is not None
    pixels, rows = result
    assert rows[:, 0].astype(int).tolist() == [c.cls for c in cutouts]
    boxes = pixel_boxes(rows, pixels.shape[:2])
    changed = np.abs(pixels.astype(int) - background.astype(int)).max(axis=2) > 0
    inside = np.zeros_like(changed)
    fx0, fy0, fx1, fy1 = bin_floor(SIZE)
    for cutout, (x0, y0, x1, y1) in zip(cutouts, boxes, strict=True):
        assert (y1 - y0, x1 - x0) == cutout.alpha.shape  # box = pasted object's extent
        assert fx0 <= x0 and fy0 <= y0 and x1 <= fx1 and y1 <= fy1  # on the bin floor
        assert not inside[y0:y1, x0:x1].any()  # objects never overlap
        inside[y0:y1, x0:x1] = True
        # The object reaches every side of its box: the box is tight, as the renderer's are.
        hit = changed[y0:y1, x0:x1]
        assert hit[0].any() and hit[-1].any() and hit[:, 0].any() and hit[:, -1].any()
    assert not (changed & ~inside).any()  # nothing changed outside the label boxes


def test_write_copy_paste_writes_a_yolo_folder(real: Path, tmp_path: Path) -> None:
    out = write_copy_paste(real, tmp_path / "cp", n=6, seed=1)
    images = sorted((out / "images").glob("*.png"))
    assert len(images) == 6
    products = sorted(read_rows(real / "labels" / "g003_0000.txt")[:, 0].tolist())
    for image in images:
        rows = read_rows(out / "labels" / f"{image.stem}.txt")
        assert sorted(rows[:, 0].tolist()) == products  # one photo's product set per bin
        assert read_image(image).shape == (*SIZE[::-1], 3)
    names = yaml.safe_load((out / "data.yaml").read_text())["names"]
    assert [names[i] for i in sorted(names)] == list(CLASSES)
    again = write_copy_paste(real, tmp_path / "cp2", n=6, seed=1)
    assert (again / "images" / "cp_0005.png").read_bytes() == images[-1].read_bytes()


def test_unlabelled_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", SIZE).save(tmp_path / "images" / "a.png")
    with pytest.raises(ValueError, match="no labelled objects"):
        write_copy_paste(tmp_path, tmp_path / "out", n=2)
