"""The built-in bin renderer: determinism, labels that match pixels, groups, partial objects."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from training.bins import bin_floor
from training.render import (
    CLASSES,
    MIN_VISIBLE,
    arrange,
    arrange_cluttered,
    draw,
    labels_from_masks,
    make_group,
    parse_size,
    render_image,
    write_corpus,
)


def _pixel_box(row: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A normalised YOLO row as (x0, y0, x1, y1) in pixels."""
    w, h = size
    _, cx, cy, bw, bh = row
    return np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])


def _read_labels(path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2).reshape(-1, 5)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_corpus(tmp_path / "a", groups=2, per_group=3, size=(64, 48), seed=0)
    b = write_corpus(tmp_path / "b", groups=2, per_group=3, size=(64, 48), seed=0)
    c = write_corpus(tmp_path / "c", groups=2, per_group=3, size=(64, 48), seed=1)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".png"]) == 6
    for f in files:
        if f.name != "data.yaml":  # data.yaml holds the (different) absolute folder
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    pngs = sorted((a / "images").glob("*.png"))
    assert all(p.read_bytes() != (c / "images" / p.name).read_bytes() for p in pngs)


@pytest.mark.parametrize("size", [(64, 64), (256, 256), (160, 90)])
def test_each_box_is_the_bounding_box_of_its_object_pixels(size):
    for g in range(5):
        products = make_group(3, g)
        image, labels = render_image(products, size, np.random.default_rng([g, 11]))
        scene = arrange(products, size, np.random.default_rng([g, 11]))
        assert np.array_equal(np.asarray(image), draw(scene)[0])  # the scene that was rendered
        assert len(labels) == len(products)
        assert set(labels[:, 0].astype(int)) <= set(range(len(CLASSES)))
        assert [CLASSES[int(c)] for c in labels[:, 0]] == [p.kind for p in products]
        clean, _ = draw(scene, shadows=False, noise=False)
        for i, row in enumerate(labels):
            # Removing object i changes exactly its pixels (no shadows, no noise).
            without, _ = draw(scene, shadows=False, noise=False, omit=i)
            ys, xs = np.nonzero(np.abs(clean.astype(int) - without).max(axis=2) > 0)
            pixels = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert np.abs(_pixel_box(row, size) - pixels).max() <= 1 + 1e-6, (g, i)


def test_boxes_are_tight_around_the_masks():
    products = make_group(0, 5)
    _, labels, masks = render_image(products, (128, 96), np.random.default_rng(0),
                                    return_masks=True)
    for row, mask in zip(labels, masks, strict=True):
        ys, xs = np.nonzero(mask >= 0.5)
        expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert np.allclose(_pixel_box(row, (128, 96)), expected, atol=1e-3)


def test_products_never_overlap_and_stay_on_the_floor():
    size = (96, 96)
    x0, y0, x1, y1 = bin_floor(size)
    for g in range(12):
        _, _, masks = render_image(make_group(1, g), size, np.random.default_rng(g),
                                   return_masks=True)
        covered = np.stack([m > 0 for m in masks])
        assert covered.sum(axis=0).max() <= 1, f"group {g}: products overlap"
        ys, xs = np.nonzero(covered.any(axis=0))
        assert xs.min() >= x0 - 1 and xs.max() + 1 <= x1 + 1
        assert ys.min() >= y0 - 1 and ys.max() + 1 <= y1 + 1


def test_a_group_is_one_product_set_in_many_arrangements(tmp_path):
    out = write_corpus(tmp_path / "c", groups=4, per_group=3, size=(64, 64), seed=2)
    catalogue = json.loads((out / "groups.json").read_text())
    assert sorted(catalogue) == ["0", "1", "2", "3"]
    for g in range(4):
        kinds = sorted(CLASSES.index(p["kind"]) for p in catalogue[str(g)])
        assert 1 <= len(kinds) <= 6
        arrangements = []
        for i in range(3):
            rows = _read_labels(out / "labels" / f"g{g:03d}_{i:04d}.txt")
            assert sorted(rows[:, 0].astype(int)) == kinds
            arrangements.append(rows[:, 1:3])
        assert not np.allclose(arrangements[0], arrangements[1])  # products moved


def test_first_group_gives_unseen_product_sets(tmp_path):
    seen = [make_group(0, g) for g in range(8)]
    unseen = [make_group(0, g) for g in range(8, 12)]
    assert all(u != s for u in unseen for s in seen)
    assert make_group(0, 3) == make_group(0, 3)
    out = write_corpus(tmp_path / "c", groups=2, per_group=1, size=(32, 32), first_group=8)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["g008_0000.png",
                                                                   "g009_0000.png"]
    spec = (out / "data.yaml").read_text()
    assert f"path: {out.resolve()}" in spec and "0: tube" in spec and "3: spray" in spec


def test_partial_objects_show_about_half_and_labels_box_the_rest():
    products = make_group(4, 1)
    size = (128, 128)
    scene = arrange(products, size, np.random.default_rng(3), partial=True)
    whole = dataclasses.replace(scene, placements=tuple(
        dataclasses.replace(p, cut=None) for p in scene.placements))
    _, cut_masks = draw(scene)
    _, whole_masks = draw(whole)
    for cut, full in zip(cut_masks, whole_masks, strict=True):
        assert 0.25 < cut.sum() / full.sum() < 0.75
    labels = labels_from_masks(scene, cut_masks)
    full_labels = labels_from_masks(whole, whole_masks)
    assert (labels[:, 3] * labels[:, 4] < full_labels[:, 3] * full_labels[:, 4]).all()
    _, partial_labels = render_image(products, size, np.random.default_rng(3), partial=True)
    assert np.allclose(partial_labels, labels)


@pytest.mark.parametrize("size", [(32, 32), (1280, 720)])
def test_extreme_sizes_render(size):
    image, labels = render_image(make_group(0, 2), size, np.random.default_rng(0))
    assert image.size == size and len(labels) == len(make_group(0, 2))
    assert (labels[:, 3:] > 0).all()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="size"):
        write_corpus(tmp_path / "x", groups=1, per_group=1, size=(16, 16))
    with pytest.raises(ValueError, match="groups"):
        write_corpus(tmp_path / "x", groups=0, per_group=1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.pdf").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        write_corpus(tmp_path / "busy", groups=1, per_group=1, size=(32, 32))


def test_rewriting_a_corpus_leaves_no_stale_images(tmp_path):
    write_corpus(tmp_path / "c", groups=2, per_group=2, size=(32, 32))
    write_corpus(tmp_path / "c", groups=1, per_group=1, size=(32, 32))
    assert [p.name for p in (tmp_path / "c" / "images").iterdir()] == ["g000_0000.png"]
    assert [p.name for p in (tmp_path / "c" / "labels").iterdir()] == ["g000_0000.txt"]


def _box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


@pytest.mark.parametrize("size", [(256, 256), (512, 288)])
def test_a_cluttered_label_boxes_the_visible_pixels_of_an_occluded_object(size):
    cut_by_others = 0
    for g, k in np.ndindex(4, 3):
        products = make_group(0, g, "cluttered")
        scene = arrange_cluttered(products, size, np.random.default_rng([g, k]))
        scene = dataclasses.replace(scene, blur=0.0)  # blur spreads pixel differences
        _, masks = draw(scene)
        labels = labels_from_masks(scene, masks)
        # Each object drawn alone: its whole pixels; what lies above it hides some of them.
        whole = [draw(dataclasses.replace(scene, placements=(p,)))[1][0] for p in
                 scene.placements]
        visible = [w * np.prod([1 - a for a in whole[i + 1:]], axis=0)
                   for i, w in enumerate(whole)]
        kept = [i for i, (v, w) in enumerate(zip(visible, whole, strict=True))
                if (v >= 0.5).sum() >= MIN_VISIBLE * (w >= 0.5).sum()]
        assert len(labels) == len(kept) >= 1
        clean, _ = draw(scene, shadows=False, noise=False)
        for row, i in zip(labels, kept, strict=True):
            assert CLASSES[int(row[0])] == scene.placements[i].product.kind
            box = _box(visible[i] >= 0.5)
            assert np.allclose(_pixel_box(row, size), box, atol=1e-3), (g, i)
            # Against the pixels: removing the object changes nothing where it is hidden.
            without, _ = draw(scene, shadows=False, noise=False, omit=i)
            changed = np.abs(clean.astype(int) - without).max(axis=2) > 8
            assert changed[visible[i] >= 0.5].mean() > 0.9
            assert not (changed & (visible[i] < 0.01)).any(), (g, i)
            if (np.abs(box - _box(whole[i] >= 0.5)) > 2).any():
                cut_by_others += 1  # the whole object's box would have been wrong
    assert cut_by_others >= 3  # the scenes really were cluttered


def test_an_object_mostly_hidden_gets_no_label():
    products = make_group(0, 1, "cluttered")
    scene = arrange_cluttered(products, (256, 256), np.random.default_rng(0))
    below = scene.placements[0]
    cover = dataclasses.replace(below, product=dataclasses.replace(
        below.product, length=below.product.length * 1.3, width=below.product.width * 1.6))
    buried = dataclasses.replace(scene, placements=(below, cover))
    _, masks = draw(buried)
    assert 0 <= (masks[0] >= 0.5).sum() < MIN_VISIBLE * (masks[1] >= 0.5).sum()
    labels = labels_from_masks(buried, masks)
    assert len(labels) == 1 and CLASSES[int(labels[0, 0])] == cover.product.kind


def test_cluttered_bins_vary_count_overlap_and_light(tmp_path):
    out = write_corpus(tmp_path / "c", groups=3, per_group=12, size=(256, 256), seed=0,
                       scene="cluttered")
    again = write_corpus(tmp_path / "d", groups=3, per_group=12, size=(256, 256), seed=0,
                         scene="cluttered")
    for f in sorted((out / "images").iterdir()):
        assert f.read_bytes() == (again / "images" / f.name).read_bytes()
    catalogue = json.loads((out / "groups.json").read_text())
    overlaps = 0
    for g in range(3):
        n = len(catalogue[str(g)])
        assert 3 <= n <= 8
        assert make_group(0, g, "cluttered") != make_group(0, g)  # a product set of its own
        counts = set()
        for i in range(12):
            rows = _read_labels(out / "labels" / f"g{g:03d}_{i:04d}.txt")
            counts.add(len(rows))
            assert len(rows) <= n
            boxes = [_pixel_box(r, (256, 256)) for r in rows]
            overlaps += any(min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
                            for j, a in enumerate(boxes) for b in boxes[j + 1:])
        assert len(counts) > 1, f"group {g}: every image shows the same number of products"
    assert overlaps >= 12
    scenes = [arrange_cluttered(make_group(0, 0, "cluttered"), (256, 256),
                                np.random.default_rng(i)) for i in range(40)]
    assert 4 <= sum(s.blur > 0 for s in scenes) <= 24
    assert sum(s.spot[3] > 0 for s in scenes) >= 12
    assert np.ptp([s.tint for s in scenes], axis=0).min() > 0.1  # colour casts


def test_scene_kind_is_checked(tmp_path):
    with pytest.raises(ValueError, match="tidy, cluttered"):
        write_corpus(tmp_path / "x", groups=1, per_group=1, size=(64, 64), scene="messy")
    with pytest.raises(ValueError, match="tidy"):
        render_image(make_group(0, 0, "cluttered"), (64, 64), np.random.default_rng(0),
                     partial=True, kind="cluttered")


def test_size_parsing():
    assert parse_size("1280x720") == (1280, 720) and parse_size("64×64") == (64, 64)
    for bad in ("64", "64x", "axb", "16x16", "64x99999"):
        with pytest.raises(ValueError):
            parse_size(bad)
