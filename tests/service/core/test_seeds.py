import numpy as np

from service.core.seeds import image_seeds, stream


def test_an_image_seed_depends_on_the_stream_and_its_index_only():
    whole = image_seeds(7, 0, 10)
    assert image_seeds(7, 0, 4) + image_seeds(7, 4, 6) == whole
    assert len(set(whole)) == 10 and not set(whole) & set(image_seeds(8, 0, 10))
    assert all(0 <= s < 2**64 for s in whole)


def test_no_seed_is_a_fresh_stream():
    assert stream(5) == 5 and stream(None) != stream(None)
    assert np.random.default_rng(image_seeds(stream(None), 0, 1)[0]).random() != \
        np.random.default_rng(image_seeds(stream(None), 0, 1)[0]).random()
