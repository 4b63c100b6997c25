import io

import numpy as np
from PIL import Image

from service.core import png


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_pngs_decode_to_the_same_pixels_in_the_same_order():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (9, 40, 56, 3), dtype=np.uint8)
    encoded = png.encode_all(images)
    assert [e[:8] for e in encoded] == [b"\x89PNG\r\n\x1a\n"] * 9
    for image, data in zip(images, encoded, strict=True):
        assert np.array_equal(decoded(data), image)  # RGB stays RGB (OpenCV writes BGR)
    assert encoded == [png.encode(image) for image in images]
    grey = images[0, ..., 0]
    assert np.array_equal(decoded(png.encode(grey)), grey)
    assert png.encode_all([]) == []
