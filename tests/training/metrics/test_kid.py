"""KID separates feature sets from different distributions and is ~0 for the same one."""

import numpy as np
import pytest

from training.metrics import kid


def test_kid_is_near_zero_for_one_distribution_and_large_for_two():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same = kid.compute(a, b)["kid"]
    shifted = kid.compute(a, b + 0.5)["kid"]
    assert abs(same) < 0.05 and shifted > 10 * max(abs(same), 1e-3)


def test_kid_needs_two_images():
    with pytest.raises(ValueError, match="at least 2"):
        kid.compute(np.zeros((1, 4)), np.zeros((5, 4)))
