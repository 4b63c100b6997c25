"""Tests for training/labeller.py and training/ultralytics_setup.py: train and publish."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from service.core.repository import LABELLER
from tests.labeller_fixtures import (
    FAST_TRAIN_ARGS,
    IMGSZ,
    TrainedLabeller,
    tiny_corpus,
    trained_labeller,
)
from training.labeller import (
    SMALL_IMAGES,
    STANDARD,
    corpus_fingerprint,
    recipe_for,
    resolve_recipe,
    split_by_group,
    train_labeller,
)
from training.render import CLASSES
from training.ultralytics_setup import (
    DownloadBlocked,
    block_downloads,
    configure_offline,
    import_ultralytics,
)


@pytest.fixture(scope="session")
def labeller() -> TrainedLabeller:
    return trained_labeller()


def test_configure_offline_sets_environment_and_fonts(tmp_path: Path) -> None:
    home = configure_offline(tmp_path / "yolo")
    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    for font in ("Arial.ttf", "Arial.Unicode.ttf"):
        data = (home / "Ultralytics" / font).read_bytes()
        assert data[:4] == b"\x00\x01\x00\x00"  # a TrueType file, not an error page


def test_downloads_are_refused_with_a_clear_error() -> None:
    import_ultralytics()
    from ultralytics import YOLO

    with block_downloads(), pytest.raises(DownloadBlocked, match="boxgen runs offline"):
        YOLO("yolov5n.pt")  # a weight name: Ultralytics would download it


def test_split_by_group_keeps_groups_whole() -> None:
    images = [Path(f"g{g:03d}_{i:04d}.png") for g in range(10) for i in range(5)]
    train, val = split_by_group(images, seed=3)
    assert sorted(train + val) == sorted(images)
    groups = lambda paths: {p.stem[:4] for p in paths}  # noqa: E731
    assert len(groups(val)) == 2 and not groups(train) & groups(val)
    # One group only: split images instead, so validation is never empty.
    train, val = split_by_group(images[:5])
    assert train and val and len(train + val) == 5


def test_train_labeller_publishes_onnx_and_card(labeller: TrainedLabeller) -> None:
    assert labeller.network_attempts == ()  # fully offline: not a single connection tried
    card = labeller.version.card
    assert labeller.version.name == LABELLER and labeller.version.file("labeller.onnx").is_file()
    assert card["classes"] == list(CLASSES) and card["imgsz"] == IMGSZ
    assert card["model_cfg"] == "yolov5n.yaml" and card["files"] == ["labeller.onnx"]
    assert card["data_fingerprint"] == corpus_fingerprint(labeller.corpus)
    assert re.fullmatch(r"[0-9a-f]{64}", card["data_fingerprint"])
    metrics = card["metrics"]
    for key in ("val_mAP50", "val_mAP50_95", "heldout_mAP50", "heldout_mAP50_95"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["heldout_images"] == 8
    # No recipe named: Ultralytics' defaults with the caller's settings, all on the card.
    assert card["recipe"] == "standard" and card["train_args"] == FAST_TRAIN_ARGS


def test_recipes_pick_size_and_settings_by_image_size() -> None:
    assert recipe_for(64) is SMALL_IMAGES and recipe_for(128) is SMALL_IMAGES
    assert recipe_for(640) is STANDARD
    # Small images train at twice their side (a multiple of 32): objects get more cells.
    assert SMALL_IMAGES.imgsz_for(64) == 128 and SMALL_IMAGES.imgsz_for(40) == 96
    assert STANDARD.imgsz_for(256) == 256 and STANDARD.imgsz_for(250) == 256
    # No gradient accumulation for small images: the nominal batch follows the real one.
    assert SMALL_IMAGES.settings(8)["nbs"] == 8 and "nbs" not in STANDARD.settings(8)
    assert resolve_recipe("auto", tiny_corpus()) is SMALL_IMAGES  # the 64x64 test corpus
    assert resolve_recipe("standard", tiny_corpus()) is STANDARD
    with pytest.raises(ValueError, match="unknown labeller recipe 'fast'"):
        resolve_recipe("fast", tiny_corpus())


def test_fingerprint_changes_with_a_label(labeller: TrainedLabeller, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(labeller.corpus, tmp_path / "copy"))
    before = corpus_fingerprint(copy)
    label = sorted((copy / "labels").glob("*.txt"))[0]
    label.write_text(label.read_text().replace("0.", "0.1", 1))
    assert corpus_fingerprint(copy) != before


def test_train_labeller_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a model yaml"):
        train_labeller(tmp_path, tmp_path / "models", model_cfg="yolov5n.pt", epochs=1, imgsz=64)
    with pytest.raises(FileNotFoundError, match="YOLO-layout"):
        train_labeller(tmp_path, tmp_path / "models", model_cfg="yolov5n.yaml", epochs=1, imgsz=64)
    (tmp_path / "images").mkdir()
    (tmp_path / "data.yaml").write_text("names: [a]\n")
    with pytest.raises(ValueError, match="no images"):
        train_labeller(tmp_path, tmp_path / "models", model_cfg="yolov5n.yaml", epochs=1, imgsz=64)
