"""Novelty, quality and selection on rendered bins; detections here are the renderer's own labels.

The labeller-dependent sanity checks live in tests/training/test_evaluate.py.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from service.core.labeller_session import Detections
from service.core.quality import EXTRA_OBJECTS, QualityCalibration, conf_quantile, products
from service.core.sampling import sample_selected
from service.core.selector import Selector, category_fractions
from training.render import make_group, render_image

GROUP, SIZE = 10, (64, 64)
PRODUCTS = make_group(0, GROUP)


def render(index: int, partial: bool = False) -> tuple[np.ndarray, Detections]:
    """One arrangement of the group and its true boxes as detections (confidence 0.9)."""
    image, labels = render_image(PRODUCTS, SIZE, np.random.default_rng([0, GROUP, index]),
                                 partial=partial)
    w, h = SIZE
    cls, cx, cy, bw, bh = labels.T
    boxes = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w,
                      (cy + bh / 2) * h], 1).astype(np.float32)
    det = Detections(boxes, cls.astype(np.int64), np.full(len(cls), 0.9, np.float32), (h, w))
    return np.asarray(image), det


def copy_of(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a memorising generator returns: a 1-px shift, blur, colour cast, noise, JPEG."""
    x = np.roll(image, tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
    x = Image.fromarray(x).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.0)))
    a = np.asarray(x, np.float32) * rng.uniform(0.95, 1.05, 3) + rng.normal(0, 5, (64, 64, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=60)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.fixture(scope="module")
def train() -> tuple[np.ndarray, list[Detections]]:
    pairs = [render(i) for i in range(10)]
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]


@pytest.fixture(scope="module")
def selector(train) -> Selector:
    return Selector.fit(*train)


def test_copies_are_red_and_new_arrangements_are_not(train, selector):
    rng = np.random.default_rng(0)
    copies = np.stack([copy_of(train[0][i % 10], rng) for i in range(40)])
    others = np.stack([render(i)[0] for i in range(100, 140)])
    novelty, nearest = selector.novelty(copies)
    assert (novelty < 1).mean() >= 0.95
    assert (nearest == np.arange(40) % 10).mean() >= 0.95  # and it names the right original
    assert (selector.novelty(train[0])[0] < 1).all()
    assert (selector.novelty(others)[0] < 1).mean() <= 0.10


def test_cut_objects_are_white_whole_ones_green(selector):
    whole = [render(i) for i in range(200, 220)]
    cut = [render(i, partial=True) for i in range(300, 320)]
    green = category_fractions(selector.score(np.stack([w[0] for w in whole]),
                                              [w[1] for w in whole]))
    white = category_fractions(selector.score(np.stack([c[0] for c in cut]),
                                              [c[1] for c in cut]))
    assert green["green"] >= 0.9, green
    assert white["white"] >= 0.8, white


def test_missing_objects_lower_quality(selector):
    image, det = render(400)
    fewer = Detections(det.boxes[:1], det.cls[:1], det.conf[:1], det.shape)
    full, missing = selector.score(np.stack([image, image]), [det, fewer])
    assert full.quality == 1.0 and missing.quality < full.quality
    assert missing.category == "white"


def boxes(*sides: tuple[float, float]) -> Detections:
    """One box per (width, height) in pixels of a 100-px image, class 0, confidence 0.9."""
    xyxy = np.array([[10, 10, 10 + w, 10 + h] for w, h in sides], np.float32)
    return Detections(xyxy, np.zeros(len(sides), np.int64), np.full(len(sides), 0.9, np.float32),
                      (100, 100))


def test_a_rotated_product_is_whole_and_a_cut_one_partial():
    # Ten photos show a 30x10 bottle lying straight; a new arrangement turns it 45 degrees.
    calibration = QualityCalibration.fit([boxes((30, 10))] * 5 + [boxes((10, 30))] * 5,
                                         [(100, 100)] * 10)
    turned, cut_across, cut_lengthwise = boxes((28, 28)), boxes((15, 10)), boxes((30, 4))
    assert calibration.score(turned, (100, 100))[:2] == (1.0, False)
    assert calibration.score(cut_across, (100, 100))[1]
    assert calibration.score(cut_lengthwise, (100, 100))[1]
    # A round can (20x20) cut in half keeps its long side; its short side gives it away.
    can = QualityCalibration.fit([boxes((20, 20))] * 10, [(100, 100)] * 10)
    assert can.score(boxes((20, 10)), (100, 100))[1]
    assert can.score(boxes((21, 19)), (100, 100))[:2] == (1.0, False)


def test_a_part_seen_inside_a_product_is_not_a_product_of_its_own():
    # The labeller also finds a bottle's label (class 1) inside the bottle's box (class 0):
    # per-class NMS keeps both. The label is not a product, nor a partial one; a product
    # half under another (cluttered bins) is one.
    calibration = QualityCalibration.fit([boxes((30, 10))] * 10, [(100, 100)] * 10)
    bottle_and_label = Detections(np.array([[10, 10, 40, 20], [20, 11, 30, 19]], np.float32),
                                  np.array([0, 1]), np.array([0.9, 0.8], np.float32), (100, 100))
    assert calibration.score(bottle_and_label, (100, 100)) == (1.0, False,
                                                               "weakest object 0: confidence 0.90")
    assert products(bottle_and_label).index.tolist() == [0]
    overlapped = Detections(np.array([[10, 10, 40, 20], [30, 12, 60, 22]], np.float32),
                            np.array([0, 0]), np.array([0.9, 0.9], np.float32), (100, 100))
    assert products(overlapped).index.tolist() == [0, 1]


def test_a_product_read_as_another_class_is_whole_a_cut_one_is_not():
    def det(cls: int, w: int, h: int) -> Detections:
        return Detections(np.array([[10, 10, 10 + w, 10 + h]], np.float32), np.array([cls]),
                          np.array([0.9], np.float32), (100, 100))

    # A 30x20 box (class 0) and a 15x8 tube (class 1) on every photo.
    photos = [Detections(np.array([[10, 10, 40, 30], [50, 50, 65, 58]], np.float32),
                         np.array([0, 1]), np.full(2, 0.9, np.float32), (100, 100))] * 10
    calibration = QualityCalibration.fit(photos, [(100, 100)] * 10)
    assert not calibration.score(det(0, 15, 8), (100, 100))[1]  # the tube, read as class 0
    assert calibration.score(det(0, 15, 20), (100, 100))[1]  # the box cut across


def test_a_product_partly_under_another_is_not_partial_a_cut_one_alone_is():
    calibration = QualityCalibration.fit([boxes((30, 10))] * 10, [(100, 100)] * 10)
    # 21 of its 30 pixels show beside a product lying over its end; cut, it lies alone.
    under = Detections(np.array([[10, 10, 31, 20], [28, 8, 58, 18]], np.float32),
                       np.array([0, 0]), np.array([0.9, 0.9], np.float32), (100, 100))
    assert calibration.score(under, (100, 100))[:2] == (1.0, False)
    assert calibration.score(boxes((21, 10)), (100, 100))[1]


def test_a_bin_of_more_products_holds_each_to_a_lower_quantile():
    # A real bin of the photos' typical count passes whole 95 % of the times: each of one
    # product's objects is held to the 5 % quantile, each of five's to about the 1 %.
    assert conf_quantile([1] * 10) == pytest.approx(0.05)
    assert conf_quantile([4, 5, 5, 6]) == pytest.approx(1 - 0.95 ** (1 / 5))
    confs = np.linspace(0.3, 0.9, 50)
    photos = [Detections(np.array([[10 + 15 * j, 10, 20 + 15 * j, 40] for j in range(5)],
                                  np.float32), np.zeros(5, np.int64),
                         confs[5 * i : 5 * i + 5].astype(np.float32), (100, 100))
              for i in range(10)]
    calibration = QualityCalibration.fit(photos, [(100, 100)] * 10)
    assert calibration.class_conf["0"] == pytest.approx(
        np.quantile(confs.astype(np.float32), 1 - 0.95 ** (1 / 5)), abs=1e-6)


def test_each_class_is_held_to_its_own_confidence():
    # A small tube (class 0, 20x6 px) the labeller is never sure of, a bottle (class 1, 30x12)
    # it always is.
    sizes = {0: (20, 6), 1: (30, 12)}

    def det(*objects: tuple[int, float], shapes: tuple[int, ...] = (0, 1)) -> Detections:
        xyxy = np.array([[5 + 35 * i, 10, 5 + 35 * i + sizes[s][0], 10 + sizes[s][1]]
                         for i, s in enumerate(shapes)], np.float32)
        return Detections(xyxy, np.array([c for c, _ in objects], np.int64),
                          np.array([p for _, p in objects], np.float32), (100, 100))

    photos = [det((0, 0.3 + 0.01 * i), (1, 0.9)) for i in range(10)]
    calibration = QualityCalibration.fit(photos, [(100, 100)] * 10)
    assert calibration.score(det((0, 0.35), (1, 0.9)), (100, 100))[0] == 1.0
    assert calibration.score(det((0, 0.9), (1, 0.3)), (100, 100))[0] < 0.5  # an unsure bottle
    # A tube read as a bottle, as unsure as tubes are: held to the tube it looks like.
    misread = det((1, 0.35), (1, 0.9), shapes=(0, 1))
    assert calibration.score(misread, (100, 100))[0] == 1.0
    assert QualityCalibration.from_dict(calibration.to_dict()) == calibration


def test_one_product_more_than_the_photos_is_new_two_more_cost_quality():
    def det(k: int) -> Detections:
        xyxy = np.array([[5 + 30 * i, 10, 25 + 30 * i, 30] for i in range(k)], np.float32)
        return Detections(xyxy, np.zeros(k, np.int64), np.full(k, 0.9, np.float32), (100, 100))

    calibration = QualityCalibration.fit([det(1)] * 10, [(100, 100)] * 10)
    assert calibration.count_range == (1, 1)
    assert calibration.score(det(1 + EXTRA_OBJECTS), (100, 100))[0] == 1.0
    quality, _, why = calibration.score(det(2 + EXTRA_OBJECTS), (100, 100))
    assert quality == 0.75 and "real images have 1-1" in why


def test_save_and_load_give_the_same_scores(tmp_path, selector):
    images, dets = zip(*[render(i) for i in range(500, 506)], strict=True)
    card = selector.save(tmp_path)
    assert (tmp_path / "selection.npz").stat().st_size < 100_000
    loaded = Selector.load(tmp_path, card)
    a, b = selector.score(np.stack(images), dets), loaded.score(np.stack(images), dets)
    assert [s.category for s in a] == [s.category for s in b]
    assert np.allclose([s.novelty for s in a], [s.novelty for s in b], atol=1e-2)
    assert card["novelty"]["copy_threshold"] > 0
    assert tuple(json.loads(json.dumps(card))["quality"]["count_range"]) == (3, 3)


class MixedGenerator:
    """A stand-in for a generator that copies, invents and breaks: rendered bins by seed."""

    def __init__(self, train: np.ndarray, kinds: tuple[str, ...] = ("copy", "new", "cut")):
        self.train, self.kinds, self.truth, self.calls = train, kinds, {}, 0

    def __call__(self, seeds: list[int]) -> np.ndarray:
        self.calls += 1
        out = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            kind = self.kinds[int(rng.integers(len(self.kinds)))]
            index = int(rng.integers(1000, 10**6))
            if kind == "copy":
                i = int(rng.integers(len(self.train[0])))
                image, det = copy_of(self.train[0][i], rng), self.train[1][i]
            else:
                image, det = render(index, partial=kind == "cut")
            self.truth[image.tobytes()] = det
            out.append(image)
        return np.stack(out)

    def label(self, images: np.ndarray) -> list[Detections]:
        return [self.truth[image.tobytes()] for image in images]


def test_sample_selected_returns_only_green_and_is_deterministic(train, selector):
    gen = MixedGenerator(train)
    a = sample_selected(gen, gen.label, selector, n=6, seed=3, select="green")
    b = sample_selected(gen, gen.label, selector, n=6, seed=3, select="green")
    assert a.complete and len(a.images) == 6 and a.images.shape[1:] == (64, 64, 3)
    assert all(s.category == "green" for s in a.scores)
    assert np.array_equal(a.images, b.images) and a.tried == b.tried
    assert a.tried > 6 and 0 < a.passed_fraction < 1  # copies and cut bins were rejected
    c = sample_selected(gen, gen.label, selector, n=6, seed=4, select="green")
    assert not np.array_equal(a.images, c.images)


def test_the_same_seed_gives_the_same_images_however_the_rounds_fall(train, selector):
    """Image j comes from seed j of the request's stream: a request that expects every sample
    to pass (rounds of what is missing) and one that expects few to (one large round) serve
    the same images, and the learnt rate saves tries."""
    gen = MixedGenerator(train)
    hopeful = sample_selected(gen, gen.label, selector, n=5, seed=9, expected_rate=1.0)
    doubtful = sample_selected(gen, gen.label, selector, n=5, seed=9, expected_rate=0.1)
    assert hopeful.complete and np.array_equal(hopeful.images, doubtful.images)
    assert doubtful.tried > hopeful.tried and gen.calls > 2
    single = [sample_selected(gen, gen.label, selector, n=1, seed=s, expected_rate=rate)
              for s in range(10) for rate in (0.05, hopeful.pass_rate)]
    wasteful, informed = single[0::2], single[1::2]
    assert sum(r.tried for r in informed) < sum(r.tried for r in wasteful)
    assert 0 < hopeful.pass_rate < 1


def test_sample_selected_stops_at_the_budget(train, selector):
    gen = MixedGenerator(train, kinds=("copy",))
    result = sample_selected(gen, gen.label, selector, n=4, seed=0, max_tries=30)
    assert len(result.images) == 0 and result.tried == 30 and not result.complete
    assert "ran out" in result.message and result.passed_fraction == 0


def test_select_none_returns_raw_samples_with_scores(train, selector):
    gen = MixedGenerator(train)
    result = sample_selected(gen, gen.label, selector, n=5, seed=1, select="none")
    assert len(result.images) == 5 and result.tried == 5 and len(result.scores) == 5


def test_a_collapsed_generator_does_not_fill_the_request(train, selector):
    image, det = render(777)

    def collapsed(seeds: list[int]) -> np.ndarray:
        return np.repeat(image[None], len(seeds), axis=0)

    result = sample_selected(collapsed, lambda x: [det] * len(x), selector, n=3, seed=0,
                             max_tries=20)
    assert len(result.images) == 1 and not result.complete


def test_user_errors_are_value_errors(train, selector):
    with pytest.raises(ValueError, match="select must be one of"):
        sample_selected(lambda seeds: train[0][: len(seeds)], lambda x: train[1][: len(x)],
                        selector, 2, select="blue")
    with pytest.raises(ValueError, match="at least 2 training images"):
        Selector.fit(train[0][:1])
    with pytest.raises(ValueError, match="expected uint8"):
        selector.novelty(np.zeros((1, 8, 8, 3), np.float32))


def test_smeared_images_are_white_whatever_the_labeller_says(train, selector):
    """Fidelity: a blurred new arrangement keeps its boxes (quality stays high) but is white."""
    pairs = [render(i) for i in range(20, 30)]
    sharp = np.stack([p[0] for p in pairs])
    smeared = np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.0)))
                        for im in sharp])
    detections = [p[1] for p in pairs]
    blurred_scores = selector.score(smeared, detections)
    assert all(s.category == "white" and "fidelity" in s.reason for s in blurred_scores)
    assert all(s.quality > 0.8 for s in blurred_scores)
    sharp_scores = selector.score(sharp, detections)
    assert sum(s.fidelity >= 0.5 for s in sharp_scores) >= 9
    assert category_fractions(sharp_scores)["green"] >= 0.8


def test_labels_the_labeller_disagrees_with_are_white(train, tmp_path):
    images, detections = train
    selector = Selector.fit(images, detections, [d.boxes for d in detections])
    assert selector.agreement_min == pytest.approx(0.9)  # every photo agrees: 1 - 0.1
    image, det = render(40)
    lost = Detections(det.boxes[1:], det.cls[1:], det.conf[1:], det.shape)
    agree, disagree = selector.score(np.stack([image, image]), [det, lost],
                                     [det.boxes, det.boxes])
    assert agree.agreement == 1.0 and agree.category == "green"
    assert disagree.category == "white" and "disagrees" in disagree.reason
    section = json.loads(json.dumps(selector.save(tmp_path)))
    loaded = Selector.load(tmp_path, section)
    assert loaded.agreement_min == selector.agreement_min
    fresh = [new for new, _ in (render(i) for i in range(50, 53))]
    assert [s.fidelity for s in loaded.score(fresh)] == [s.fidelity for s in selector.score(fresh)]


def test_a_distractor_is_not_judged_as_the_skus_product_but_takes_a_place_in_the_bin():
    # Every photo shows two 30x10 bottles. A composite holds one bottle and an unsure 30x30
    # product of another SKU (a distractor): judged as a bottle, it is a cut or weak one.
    calibration = QualityCalibration.fit(
        [Detections(np.array([[10, 10, 40, 20], [10, 50, 40, 60]], np.float32),
                    np.zeros(2, np.int64), np.full(2, 0.9, np.float32), (100, 100))] * 10,
        [(100, 100)] * 10)
    image = Detections(np.array([[10, 10, 40, 20], [60, 60, 90, 90]], np.float32),
                       np.zeros(2, np.int64), np.array([0.9, 0.2], np.float32), (100, 100))
    foreign = np.array([[59, 61, 90, 91]], np.float32)  # its label, as constructed
    assert calibration.score(image, (100, 100))[0] < 0.5
    # Left out, the bottle is judged alone, and the distractor fills the second place.
    assert calibration.score(image, (100, 100), foreign) == (1.0, False,
                                                             "weakest object 0: confidence 0.90")
    alone = Detections(image.boxes[1:], image.cls[1:], image.conf[1:], (100, 100))
    assert calibration.score(alone, (100, 100), foreign) == (0.0, True, "no objects found")
    # Two more products of another SKU beside the two bottles: not two bottles too many.
    crowded = Detections(np.array([[10, 10, 40, 20], [10, 50, 40, 60], [60, 60, 90, 90],
                                   [60, 10, 90, 40]], np.float32), np.zeros(4, np.int64),
                         np.full(4, 0.9, np.float32), (100, 100))
    others = crowded.boxes[2:]
    assert calibration.score(crowded, (100, 100), others)[0] == 1.0
    assert calibration.score(crowded, (100, 100))[0] < 1.0  # as bottles, two are too many


def test_a_part_boxed_inside_a_product_does_not_count_against_label_agreement():
    images = np.stack([render(i)[0] for i in range(4)])
    selector = Selector.fit(images[:3], None)
    selector.agreement_min = 0.9
    label = np.array([[10, 10, 40, 20]], np.float32)
    part = Detections(np.array([[10, 10, 40, 20], [20, 11, 30, 19]], np.float32),
                      np.array([0, 1]), np.array([0.9, 0.8], np.float32), SIZE)
    stray = Detections(np.array([[10, 10, 40, 20], [45, 45, 60, 60]], np.float32),
                       np.array([0, 1]), np.array([0.9, 0.8], np.float32), SIZE)
    with_part, with_stray = selector.score(np.stack([images[3]] * 2), [part, stray],
                                           [label, label])
    assert with_part.agreement == 1.0
    assert with_stray.agreement < 0.9 and with_stray.category == "white"
