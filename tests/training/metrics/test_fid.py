"""FID: the Fréchet distance matches its closed form; weights come only from a given file."""

import numpy as np
import pytest
import torch

from training.metrics import fid


def test_frechet_distance_of_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    b = rng.normal(size=(20000, 3)) * 2 + 1  # mean 1, std 2 per dimension
    # ||mu||² = 3; trace term per dimension: 1 + 4 - 2·2 = 1.
    assert fid.frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)
    assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_fid_runs_on_a_supplied_weights_file(tmp_path):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    path = tmp_path / "inception.pt"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(),
               path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = fid.compute(images, images[::-1].copy(), path)
    assert np.isfinite(out["fid"]) and abs(out["fid"]) < 1e-3  # same set, other order
    with pytest.raises(FileNotFoundError):
        fid.compute(images, images, tmp_path / "missing.pt")
