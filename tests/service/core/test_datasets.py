"""Tests for service/core/datasets.py: what boxgen hands out trains with Ultralytics as is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from service.core.datasets import image_files, label_folder, read_image, read_images, write_dataset
from service.core.labeller_session import Detections
from tests.labeller_fixtures import TrainedLabeller, tiny_corpus, trained_labeller
from training.labeller_evaluation import ground_truth
from training.render import CLASSES
from training.ultralytics_setup import block_downloads, import_ultralytics


def _corpus_with_labels() -> tuple[list[np.ndarray], list[Detections], list[str]]:
    """Corpus images with their true boxes given made-up confidences."""
    corpus = tiny_corpus()
    files = image_files(corpus / "images")[:16]
    images = [read_image(f) for f in files]
    truth = ground_truth(corpus, files, [im.shape[:2] for im in images])
    rng = np.random.default_rng(0)
    scored = [Detections(t.boxes, t.cls, rng.uniform(0.3, 1, len(t)).astype(np.float32), t.shape)
              for t in truth]
    return images, scored, [f.stem for f in files]


def test_written_dataset_trains_with_ultralytics_after_moving(tmp_path: Path) -> None:
    images, detections, stems = _corpus_with_labels()
    written = write_dataset(tmp_path / "set", images, detections, CLASSES, stems)
    moved = Path(shutil.move(written, tmp_path / "elsewhere"))  # as if zipped and unzipped
    import_ultralytics()
    from ultralytics import YOLO

    model = YOLO("yolov5n.yaml")
    with block_downloads():
        model.train(data=str(moved / "data.yaml"), epochs=1, imgsz=64, batch=8, workers=0,
                    device="cpu", project=str(tmp_path / "runs"), name="t", plots=False,
                    verbose=False, val=False)
    dataset = model.trainer.train_loader.dataset
    assert len(dataset.labels) == len(images)  # no image dropped as corrupt
    assert sum(len(lb["cls"]) for lb in dataset.labels) == sum(len(d) for d in detections)
    assert (tmp_path / "runs" / "t" / "weights" / "last.pt").is_file()


def test_coco_json_loads_with_pycocotools(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    images, detections, stems = _corpus_with_labels()
    out = write_dataset(tmp_path / "set", images, detections, CLASSES, stems)
    coco = COCO(str(out / "annotations.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(coco.getImgIds()) == len(images)
    assert len(coco.getAnnIds()) == sum(len(d) for d in detections)
    first = coco.loadImgs(1)[0]
    assert (out / first["file_name"]).is_file() and first["width"] == images[0].shape[1]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    x, y, w, h = anns[0]["bbox"]
    np.testing.assert_allclose([x, y, x + w, y + h], detections[0].boxes[0], atol=0.01)
    assert anns[0]["score"] == pytest.approx(float(detections[0].conf[0]), abs=1e-4)


def test_labels_and_confidences_line_up(tmp_path: Path) -> None:
    images, detections, stems = _corpus_with_labels()
    out = write_dataset(tmp_path / "set", images, detections, CLASSES, stems)
    rows = np.loadtxt(out / "labels" / f"{stems[0]}.txt", ndmin=2)
    confs = np.loadtxt(out / "confidences" / f"{stems[0]}.txt", ndmin=1)
    assert rows.shape == (len(detections[0]), 5) and len(confs) == len(rows)
    np.testing.assert_allclose(rows, detections[0].yolo_rows(), atol=1e-6)
    np.testing.assert_allclose(confs, detections[0].conf, atol=1e-5)
    assert read_image(out / "images" / f"{stems[0]}.png").tolist() == images[0].tolist()
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert "path" not in data and data["names"] == dict(enumerate(CLASSES))


def test_single_class_named_after_sku(tmp_path: Path) -> None:
    images, detections, stems = _corpus_with_labels()
    out = write_dataset(tmp_path / "set", images, detections, CLASSES, stems,
                        single_class_name="SKU-42")
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == {0: "SKU-42"}
    classes = {line.split()[0] for f in (out / "labels").glob("*.txt")
               for line in f.read_text().splitlines()}
    assert classes == {"0"}
    coco = json.loads((out / "annotations.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "SKU-42", "supercategory": "product"}]
    assert {a["category_id"] for a in coco["annotations"]} == {1}


def test_label_folder_end_to_end(tmp_path: Path) -> None:
    labeller: TrainedLabeller = trained_labeller()
    out = label_folder(labeller.heldout / "images", tmp_path / "out", labeller.models, conf=0.05)
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == sorted(
        p.stem for p in (labeller.heldout / "images").glob("*.png"))
    assert len(list((out / "labels").glob("*.txt"))) == 8


def test_reading_bad_folders_gives_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        read_images(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        read_images(tmp_path / "bad")


def test_photos_read_upright_and_hidden_files_are_skipped(tmp_path: Path) -> None:
    from PIL import Image

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # a white left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; show rotated 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    (tmp_path / "._photo.jpg").write_bytes(b"macOS resource fork")
    [path] = image_files(tmp_path)
    upright = read_image(path)
    assert upright.shape == (40, 20, 3)
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50  # the white edge is on top


def test_write_dataset_rejects_mismatched_input(tmp_path: Path) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="1 images but 2"):
        write_dataset(tmp_path, [image], [Detections.empty((8, 8))] * 2, CLASSES)
    with pytest.raises(ValueError, match="unique"):
        write_dataset(tmp_path, [image] * 2, [Detections.empty((8, 8))] * 2, CLASSES, ["a", "a"])
