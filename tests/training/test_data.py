"""Loading image folders: layouts, resizing that keeps boxes on their pixels, clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from service.core.yolo import read_rows
from training.data import data_fingerprint, load_images
from training.render import CLASSES, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), groups=2, per_group=3, size=(96, 64))


def _red_box(images: torch.Tensor) -> np.ndarray:
    """(x0, y0, x1, y1) of the clearly red pixels of the first image."""
    r, g = images[0, 0].numpy(), images[0, 1].numpy()
    ys, xs = np.nonzero(r - g > 0.8)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def _label_box(row: np.ndarray, resolution: int) -> np.ndarray:
    _, cx, cy, w, h = row * np.array([1, resolution, resolution, resolution, resolution])
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


@pytest.fixture
def red_rectangle(tmp_path):
    """A 120×60 photo with one red rectangle at x 30..70, y 10..40, labelled as class 1."""
    folder = tmp_path / "wide"
    folder.mkdir()
    pixels = np.full((60, 120, 3), 60, np.uint8)
    pixels[10:40, 30:70] = (230, 20, 20)
    Image.fromarray(pixels).save(folder / "shot.png")
    box = (50 / 120, 25 / 60, 40 / 120, 30 / 60)  # cx, cy, w, h
    (folder / "shot.txt").write_text("1 " + " ".join(f"{v:.6f}" for v in box) + "\n")
    return folder


def test_yolo_corpus_loads_with_its_labels(corpus):
    data = load_images(corpus, 32)
    assert data.images.shape == (6, 3, 32, 32) and data.images.dtype == torch.float32
    assert -1 <= data.images.min() < data.images.max() <= 1
    assert data.classes == CLASSES
    assert [p.name for p in data.paths][:2] == ["g000_0000.png", "g000_0001.png"]
    for path, labels in zip(data.paths, data.labels, strict=True):
        # A stretch leaves normalised boxes unchanged.
        assert np.allclose(labels, np.loadtxt(corpus / "labels" / f"{path.stem}.txt", ndmin=2))


def test_split_subfolders_and_names_from_data_yaml(corpus, tmp_path):
    root = tmp_path / "split"
    for split, stems in (("train", ["g000_0000", "g000_0001"]), ("val", ["g001_0000"])):
        for sub, suffix in (("images", ".png"), ("labels", ".txt")):
            (root / sub / split).mkdir(parents=True)
            for stem in stems:
                name = f"{stem}{suffix}"
                shutil.copy(corpus / sub / name, root / sub / split / name)
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [a, b, c, d]\n")
    data = load_images(root, 16)
    assert len(data) == 3 and data.classes == ("a", "b", "c", "d")
    assert np.allclose(data.labels[2], np.loadtxt(corpus / "labels" / "g001_0000.txt", ndmin=2))


@pytest.mark.parametrize("fit", ["stretch", "letterbox"])
def test_boxes_still_cover_their_pixels_after_resizing(red_rectangle, fit):
    data = load_images(red_rectangle, 64, fit=fit)
    assert data.labels[0][0, 0] == 1
    assert np.abs(_label_box(data.labels[0][0], 64) - _red_box(data.images)).max() <= 1
    if fit == "letterbox":  # the padding is grey and the image keeps its aspect ratio
        assert torch.allclose(data.images[0, :, 0, 0], torch.full((3,), 114 / 127.5 - 1))
        assert data.labels[0][0, 3] / data.labels[0][0, 4] == pytest.approx(40 / 30)


def test_plain_folder_with_a_camera_jpeg_ignores_other_files(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    y, x = np.mgrid[0:1440, 0:1920]
    photo = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(photo).save(folder / "IMG_0001.JPG", quality=90)
    (folder / "notes.txt").write_text("shot on the loading dock\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    data = load_images(folder, 64, min_images=1, max_images=100)
    assert data.images.shape == (1, 3, 64, 64)
    assert [p.name for p in data.paths] == ["IMG_0001.JPG"]
    assert data.labels[0].shape == (0, 5)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_images(tmp_path / "nowhere", 32)


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("no pictures here")
    with pytest.raises(ValueError, match="no images"):
        load_images(tmp_path, 32)


def test_corrupt_image_is_named(red_rectangle):
    (red_rectangle / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match="broken.png") as err:
        load_images(red_rectangle, 32)
    assert "\n" not in str(err.value)


def test_truncated_jpeg_is_named(tmp_path):
    Image.new("RGB", (200, 100), (10, 200, 30)).save(tmp_path / "cut.jpg")
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.jpg"):
        load_images(tmp_path, 32)


def test_image_count_limits(red_rectangle):
    shutil.copy(red_rectangle / "shot.png", red_rectangle / "shot2.png")
    with pytest.raises(ValueError, match="at least 5"):
        load_images(red_rectangle, 32, min_images=5)
    with pytest.raises(ValueError, match="at most 1"):
        load_images(red_rectangle, 32, max_images=1)
    assert len(load_images(red_rectangle, 32, min_images=2, max_images=2)) == 2


def test_bad_labels_and_options(red_rectangle):
    with pytest.raises(ValueError, match="fit"):
        load_images(red_rectangle, 32, fit="crop")
    (red_rectangle / "shot.txt").write_text("1 0.5 0.5 0.2\n")
    with pytest.raises(ValueError, match=r"shot.txt:1"):
        load_images(red_rectangle, 32)
    (red_rectangle / "shot.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    (red_rectangle / "data.yaml").write_text("names: {0: tube, 1: can}\n")
    with pytest.raises(ValueError, match="class 7"):
        load_images(red_rectangle, 32)


def test_polygon_labels_become_boxes(tmp_path):
    (tmp_path / "seg.txt").write_text("2 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n")
    assert np.allclose(read_rows(tmp_path / "seg.txt"), [[2, 0.3, 0.4, 0.4, 0.4]])


def test_fingerprint_follows_content_not_order(corpus, tmp_path):
    paths = sorted((corpus / "images").glob("*.png"))
    assert data_fingerprint(paths) == data_fingerprint(reversed(paths))
    assert data_fingerprint(paths) != data_fingerprint(paths[:-1])
    copy = tmp_path / paths[0].name
    copy.write_bytes(paths[0].read_bytes()[:-1] + b"\x00")
    assert data_fingerprint([copy, *paths[1:]]) != data_fingerprint(paths)
