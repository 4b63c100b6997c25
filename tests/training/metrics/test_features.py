"""The offline random-CNN features are deterministic and tell different images apart."""

import numpy as np

from training.metrics.features import image_features


def test_features_are_deterministic_and_size_independent():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    a, b = image_features(images), image_features(images.copy())
    assert a.shape == (4, 512) and np.array_equal(a, b)
    assert not np.allclose(a[0], a[1])
    big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # same picture at 128 px
    assert np.allclose(image_features(big), a, atol=1e-4)
