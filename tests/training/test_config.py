import pytest

from training.config import PROFILES, TrainConfig, apply_overrides, profile


def test_thesis_defaults():
    cfg = profile("thesis")
    assert (cfg.resolution, cfg.z_dim, cfg.batch_size, cfg.n_critic) == (256, 128, 64, 5)
    assert (cfg.lr_g, cfg.beta1, cfg.penalty_weight) == (2e-4, 0.5, 10.0)
    assert (cfg.loss, cfg.penalty, cfg.critic_norm) == ("wgan", "wgan-gp", "layer")


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(ValueError, match="demo, thesis, tiny"):
        profile("huge")


def test_overrides_are_typed():
    cfg = apply_overrides(
        PROFILES["tiny"], ["batch_size=4", "augment=cutout", "amp=false", "lr-g=1e-3"]
    )
    assert (cfg.batch_size, cfg.augment, cfg.amp, cfg.lr_g) == (4, "cutout", False, 1e-3)
    with pytest.raises(ValueError, match="batch_size takes a int"):
        apply_overrides(cfg, ["batch_size=big"])
    with pytest.raises(ValueError, match="bad override 'nope=1'"):
        apply_overrides(cfg, ["nope=1"])


def test_round_trip():
    cfg = PROFILES["demo"]
    assert TrainConfig.from_dict(cfg.to_dict() | {"unknown": 1}) == cfg


@pytest.mark.parametrize(
    ("change", "message"),
    [({"sample_every": 0}, "sample_every must be at least 1"),
     ({"iterations": -1}, "iterations must not be negative"),
     ({"ema_beta": 1.0}, "ema_beta must be in"),
     ({"loss": "wasserstein"}, "loss 'wasserstein' is not one of"),
     ({"augment": "colour"}, "unknown augmentation 'colour'")],
)
def test_bad_values_are_refused_naming_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        profile("tiny").replace(**change)
