"""Novelty quantiles and copy fraction."""

import numpy as np
import pytest

from training.metrics import novelty


def test_copy_fraction_and_quantiles():
    out = novelty.compute([0.1, 0.5, 2.0, 3.0])
    assert out["copy_fraction"] == 0.5 and out["novelty_q05"] < out["novelty_median"] < 3
    assert novelty.nearest_spread([0, 0, 1], 10)["nearest_distinct"] == 2
    with pytest.raises(ValueError):
        novelty.compute(np.zeros(0))
