"""The issue's sanity checks with a real trained labeller, and the report files.

Training images fed as "generated" are >= 95 % red; other arrangements of the same products
are <= 10 % red; bins whose products are cut in half are mostly white.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.core.labeller_session import LabellerSession
from service.core.selector import category_fractions
from tests.selection_fixtures import arrangements, models
from training.evaluate import evaluate_folder, evaluate_generator, fit_selector, selection_score


@pytest.fixture(scope="module")
def repo() -> Path:
    return models()


@pytest.fixture(scope="module")
def labeller(repo) -> LabellerSession:
    return LabellerSession.from_repository(repo)


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return arrangements(0, 10)


def test_sanity_checks_of_the_four_categories(labeller, train):
    selector = fit_selector(train, labeller)
    others, cut = arrangements(100, 30), arrangements(200, 30, partial=True)
    as_generated = category_fractions(selector.score(train, labeller.label(train)))
    new = category_fractions(selector.score(others, labeller.label(others)))
    broken = category_fractions(selector.score(cut, labeller.label(cut)))
    assert as_generated["red"] >= 0.95, as_generated
    assert new["red"] <= 0.10, new
    assert new["green"] >= 0.75 and new["white"] <= 0.05, new
    assert broken["white"] >= 0.5, broken


def save(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


def test_evaluate_folder_writes_report_and_contact_sheet(tmp_path, repo, train):
    generated = np.concatenate([train[:4], arrangements(300, 8), arrangements(400, 4, True)])
    report = evaluate_folder(save(tmp_path / "gen", generated), save(tmp_path / "train", train),
                             repo, tmp_path / "report",
                             real_dir=save(tmp_path / "real", arrangements(500, 12)))
    on_disk = json.loads((tmp_path / "report" / "report.json").read_text())
    assert on_disk["categories"] == report["categories"]
    assert set(report["categories"]) == {"green", "yellow", "white", "red"}
    assert sum(report["categories"].values()) == pytest.approx(1.0)
    assert report["categories"]["red"] >= 0.25  # the four training images
    assert [s["category"] for s in report["scores"][:4]] == ["red"] * 4
    assert report["scores"][0]["file"] == "000.png" and report["scores"][1]["nearest"] == 1
    assert report["selector"]["novelty"]["copy_threshold"] > 0
    metrics = report["metrics"]
    assert {"kid", "precision", "recall", "density", "coverage", "copy_fraction"} <= set(metrics)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "#c62828" in page and page.count('class="tile"') == len(generated)
    assert (tmp_path / "report" / "thumbs" / "train_0001.png").is_file()


def test_evaluate_folder_names_a_missing_labeller(tmp_path, train):
    save(tmp_path / "imgs", train)
    with pytest.raises(FileNotFoundError, match="_labeller"):
        evaluate_folder(tmp_path / "imgs", tmp_path / "imgs", tmp_path / "empty", tmp_path / "o")


def test_evaluate_generator_ranks_a_copier_below_an_inventor(labeller, train):
    selector = fit_selector(train, labeller)

    def copier(n: int, seed: int) -> np.ndarray:
        return train[np.random.default_rng(seed).integers(0, 10, n)]

    def inventor(n: int, seed: int) -> np.ndarray:
        return arrangements(1000 + 100 * seed, n)

    bad = evaluate_generator(copier, selector, labeller, n=12, real_images=arrangements(600, 8))
    good = evaluate_generator(inventor, selector, labeller, n=12)
    assert bad["categories"]["red"] == 1.0 and "scores" not in bad and "kid" in bad["metrics"]
    assert selection_score(good) > selection_score(bad) == 0
    json.dumps(good)  # card-ready
