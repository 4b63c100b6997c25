"""The compose fine-tune end to end on the tiny repository: photos with or without labels in, a
published version with bank, refiner and selection out, served at any size with the photos'
classes; the base refiner pretrained on a corpus and published with the base."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.core.cards import BaseCard, GeneratorCard
from service.core.object_bank import BANK_DIR, BANK_INDEX
from service.core.pipeline import ModelCache, Pipeline, generate_dataset
from service.core.repository import (
    BASE,
    BASE_REFINER_FILE,
    LABELLER,
    REFINER_FILE,
    SELECTION_FILE,
    ModelRepository,
)
from service.core.yolo import read_names, read_rows, write_data_yaml
from tests.service.server import photos, render_corpus, tiny_repository
from training.finetune import finetune

TINY = {"iterations": 3, "batch_size": 4, "pool_size": 8, "crop": 32}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compose")
    tiny_repository(root / "models")
    photos(root / "photos")
    # The photos' own class names, not the labeller's: they must carry through.
    write_data_yaml(root / "photos", ["juice", "soap", "tea", "rice"], path=root / "photos")
    return root


@pytest.fixture(scope="module")
def published(root: Path):
    return finetune("tea-box", root / "photos", root / "models", out=root / "run",
                    overrides=TINY, progress=False, status_file=root / "status.json",
                    refine=True)


def test_a_compose_version_holds_bank_refiner_and_selection(published, root: Path):
    card = published.read_card(GeneratorCard)
    assert card.recipe == "compose" and card.label_source == "labels"
    assert {REFINER_FILE, SELECTION_FILE, f"{BANK_DIR}/{BANK_INDEX}"} <= set(card.files)
    boxes = sum(len(read_rows(f)) for f in (root / "photos" / "labels").glob("*.txt"))
    assert card.labels["boxes"] == boxes and card.bank["objects"] >= 0.9 * boxes
    assert card.refiner["steps"] == 3 and card.refiner["onnx_parity_max_abs"] <= 1e-3
    assert card.refiner["parent"] == "identity"  # the tiny base has no refiner
    categories = card.evaluation["categories"]
    assert abs(sum(categories.values()) - 1) < 1e-9 and card.evaluation["n"] == 64
    assert {"fidelity", "agreement"} <= set(card.selection)
    status = json.loads((root / "status.json").read_text())
    assert status["stage"] == "published" and status["iteration"] == status["iterations"] == 3


@pytest.mark.parametrize("size", [64, 200])
def test_generate_serves_any_size_with_the_photos_classes(published, root: Path, size: int):
    out = root / f"generated-{size}"
    result = generate_dataset("tea-box", 4, out, root / "models", seed=1, select="none",
                              size=size)
    assert len(result.images) == 4 and all(im.shape == (size, size, 3) for im in result.images)
    assert read_names(out) == ["juice", "soap", "tea", "rice"]
    photo_classes = {int(r[0]) for f in (root / "photos" / "labels").glob("*.txt")
                     for r in read_rows(f)}
    for label in (out / "labels").glob("*.txt"):
        rows = read_rows(label)
        assert len(rows) and {int(r[0]) for r in rows} <= photo_classes
        assert (result.detections[0].conf == 1).all()  # by construction
    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["juice", "soap", "tea", "rice"]
    again = generate_dataset("tea-box", 4, root / "again", root / "models", seed=1,
                             select="none", size=size)
    assert all((a == b).all() for a, b in zip(result.images, again.images, strict=True))


def test_green_images_come_with_fidelity_and_agreement(published, root: Path):
    result = generate_dataset("tea-box", 3, root / "green", root / "models", seed=2,
                              select="yellow")
    assert result.tried >= len(result.images)
    for score in result.scores:
        assert score["category"] in ("green", "yellow")
        assert 0.5 <= score["fidelity"] <= 1 and score["agreement"] is not None


def test_plain_photos_are_labelled_by_the_labeller(root: Path, tmp_path: Path):
    plain = tmp_path / "plain"
    shutil.copytree(root / "photos" / "images", plain)
    version = finetune("plain-sku", plain, root / "models", out=tmp_path / "run",
                       overrides=TINY, progress=False, refine=False)
    card = version.read_card(GeneratorCard)
    assert card.label_source == "labeller" and card.refiner is None
    assert REFINER_FILE not in card.files and card.bank["objects"] > 0
    labeller = ModelRepository(root / "models").resolve(LABELLER).card["classes"]
    assert json.loads((version.path / BANK_DIR / BANK_INDEX).read_text())["names"] == labeller


def test_without_labels_or_labeller_compose_says_what_it_needs(root: Path, tmp_path: Path):
    models = tmp_path / "models"
    shutil.copytree(root / "models" / BASE, models / BASE)
    plain = tmp_path / "plain"
    shutil.copytree(root / "photos" / "images", plain)
    with pytest.raises(ValueError, match="labeller"):
        finetune("x", plain, models, out=tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="recipe"):
        finetune("x", plain, models, out=tmp_path / "run", recipe="diffusion")
    labels = tmp_path / "labels"
    shutil.copytree(root / "photos" / "labels", labels)
    (labels / "stray.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ValueError, match="stray.txt matches no image"):
        finetune("x", plain, models, out=tmp_path / "run", labels=labels)


def test_an_uploaded_empty_bin_is_used(root: Path, tmp_path: Path):
    empty = tmp_path / "empty.png"
    Image.fromarray(np.full((64, 64, 3), 77, np.uint8)).save(empty)
    version = finetune("with-empty", root / "photos", root / "models", out=tmp_path / "run",
                       overrides=TINY, progress=False, empty=empty, refine=False)
    assert version.read_card(GeneratorCard).bank["empty"] == "upload"
    with Image.open(version.path / BANK_DIR / "empty.png") as image:
        assert np.asarray(image).mean() == pytest.approx(77, abs=0.5)


def test_the_base_refiner_is_pretrained_on_a_corpus_and_fine_tunes_start_from_it(
    root: Path, tmp_path: Path
):
    from training.compose_recipe import pretrain_refiner
    from training.pretrain import publish_pretrained
    from training.refiner import refiner_profile

    corpus = render_corpus(tmp_path / "corpus", groups=2, per_group=10)
    state = pretrain_refiner(corpus, tmp_path / "refiner", refiner_profile("tiny"),
                             progress=False)
    assert state["step"] == refiner_profile("tiny").steps
    models = tmp_path / "models"
    shutil.copytree(root / "models" / LABELLER, models / LABELLER)
    base_run = ModelRepository(root / "models").resolve(BASE).card["run"]
    base = publish_pretrained(Path(base_run), models, state)
    assert BASE_REFINER_FILE in base.read_card(BaseCard).files
    version = finetune("from-base", root / "photos", models, out=tmp_path / "run",
                       overrides={"iterations": 2}, progress=False, refine=True)
    refiner = version.read_card(GeneratorCard).refiner
    assert refiner["parent"] == f"{BASE}/{base.version}" and refiner["steps"] == 2
    assert refiner["config"]["channels"] == refiner_profile("tiny").channels  # base's shape


def test_concurrent_requests_share_calls_and_get_what_each_would_alone(published, root: Path):
    """Cross-request batching: requests in flight together share the refiner's and the
    labeller's calls, and each still gets the images its seed names."""
    def pipeline() -> Pipeline:
        return Pipeline(ModelCache(ModelRepository(root / "models")))

    alone = pipeline()
    expected = [alone.generate("tea-box", 2, seed=s, select="yellow") for s in range(8)]
    shared = pipeline()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda s: shared.generate("tea-box", 2, seed=s, select="yellow"),
                            range(8)))
    assert sum(len(r.images) for r in expected) >= 4
    for a, b in zip(expected, got, strict=True):
        assert len(a.images) == len(b.images)
        assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))
        assert [d.boxes.tolist() for d in a.detections] == [d.boxes.tolist() for d in b.detections]
    assert shared.batcher.stats.jobs > shared.batcher.stats.calls  # some calls were shared


def test_compose_requests_take_turns_in_their_slots(published, root: Path):
    """At most `compose_slots` compose requests work at once; the others wait their turn and
    still get the images their seeds name."""
    pipeline = Pipeline(ModelCache(ModelRepository(root / "models")), compose_slots=2)
    session = pipeline.cache.generator(pipeline.cache.repository.resolve("tea-box"))
    compose, working, most, lock = session.compose, [0], [0], threading.Lock()

    def counted(*args, **kwargs):
        with lock:
            working[0] += 1
            most[0] = max(most[0], working[0])
        try:
            time.sleep(0.05)  # long enough for every thread to arrive
            return compose(*args, **kwargs)
        finally:
            with lock:
                working[0] -= 1

    session.compose = counted
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda s: pipeline.generate("tea-box", 2, seed=s, select="none"),
                            range(6)))
    assert most[0] == 2
    alone = Pipeline(ModelCache(ModelRepository(root / "models")))
    for seed, result in enumerate(got):
        expected = alone.generate("tea-box", 2, seed=seed, select="none")
        assert all(np.array_equal(a, b) for a, b in zip(expected.images, result.images,
                                                        strict=True))
    with pytest.raises(ValueError, match="compose_slots"):
        Pipeline(pipeline.cache, compose_slots=0)
