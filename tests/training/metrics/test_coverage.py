"""Precision/recall/density/coverage tell fidelity from diversity."""

import numpy as np

from training.metrics import coverage


def test_same_distribution_scores_high_and_a_collapsed_one_low_recall():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    good = coverage.compute(real, fake)
    assert good["precision"] > 0.8 and good["recall"] > 0.8 and good["coverage"] > 0.8
    collapsed = coverage.compute(real, np.repeat(fake[:1], 300, axis=0) + 1e-3 * fake)
    assert collapsed["precision"] > 0.5 and collapsed["coverage"] < 0.1
    far = coverage.compute(real, fake + 10)
    assert far["precision"] == 0 and far["density"] == 0
