"""The training loop: real steps on the tiny profile, exact resume, base loading, freezing."""

import json

import pytest
import torch

from training.callbacks import MetricsLog, SampleGrids, StatusFile
from training.checkpoint import load_checkpoint
from training.config import profile
from training.loop import ema_decay, train


@pytest.fixture
def images():
    return torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_resume_equals_straight_run(tmp_path, images, monkeypatch):
    # Bit-exact on the CPU; CUDA kernels (BatchNorm, convolution backward) accumulate in
    # varying order, so there the same test holds to float tolerance (test below).
    monkeypatch.setenv("BOXGEN_DEVICE", "cpu")
    cfg = profile("tiny").replace(
        iterations=4, augment="color,translation,cutout", deterministic=True
    )
    straight = train(cfg, images, tmp_path / "straight")
    train(cfg.replace(iterations=2), images, tmp_path / "resumed")
    resumed = train(cfg, images, tmp_path / "resumed")
    assert resumed.step == straight.step == 4
    for name in ("generator", "critic", "generator_ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key} differs after resume"
    assert torch.equal(straight.rng.get_state(), resumed.rng.get_state())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_on_cuda_matches_to_float_tolerance(tmp_path, images):
    cfg = profile("tiny").replace(iterations=4, deterministic=True)
    straight = train(cfg, images, tmp_path / "straight")
    train(cfg.replace(iterations=2), images, tmp_path / "resumed")
    resumed = train(cfg, images, tmp_path / "resumed")
    for a, b in zip(straight.generator.parameters(), resumed.generator.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_training_changes_weights_and_logs(tmp_path, images):
    cfg = profile("tiny").replace(iterations=4, log_every=2, sample_every=2)
    run = train(
        cfg,
        images,
        tmp_path / "run",
        [MetricsLog(), SampleGrids(), StatusFile(tmp_path / "status.json")],
    )
    state = load_checkpoint(tmp_path / "run")
    assert state["step"] == 4
    untrained = train(cfg.replace(iterations=0), images, tmp_path / "none")
    changed = [
        not torch.equal(a, b)
        for a, b in zip(run.generator.parameters(), untrained.generator.parameters(), strict=True)
    ]
    assert all(changed)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]
    # A run killed after logging step 6 but before its checkpoint resumes from step 4 and
    # logs steps 5-6 again: each step appears once.
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 6}) + "\n")
    train(cfg.replace(iterations=6), images, tmp_path / "run", [MetricsLog()])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6]
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        "step-000002.png",
        "step-000004.png",
    ]
    assert any((tmp_path / "run" / "tb").iterdir())
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["iteration"] == 4 and status["iterations"] == 4


def test_fine_tune_starts_from_base_and_freezes(tmp_path, images):
    cfg = profile("tiny").replace(iterations=2)
    base_run = train(cfg, images, tmp_path / "base")
    base = load_checkpoint(tmp_path / "base")
    tuned = train(cfg.replace(iterations=0), images, tmp_path / "tuned0", base=base)
    for a, b in zip(tuned.generator.parameters(), base_run.generator.parameters(), strict=True):
        assert torch.equal(a.cpu(), b.cpu())

    frozen = train(
        cfg.replace(iterations=2, freeze_critic_blocks=1), images, tmp_path / "frozen", base=base
    )
    first = frozen.critic.blocks[0].state_dict()
    for key, value in base_run.critic.blocks[0].state_dict().items():
        assert torch.equal(first[key].cpu(), value.cpu())
    assert not torch.equal(
        frozen.critic.blocks[1][0].weight.cpu(), base_run.critic.blocks[1][0].weight.cpu()
    )


def test_base_with_other_shape_is_refused(tmp_path, images):
    cfg = profile("tiny").replace(iterations=1)
    train(cfg, images, tmp_path / "base")
    base = load_checkpoint(tmp_path / "base")
    with pytest.raises(ValueError, match="z_dim"):
        train(cfg.replace(z_dim=8), images, tmp_path / "other", base=base)


def test_wrong_image_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        train(profile("tiny"), torch.zeros(4, 3, 64, 64), tmp_path / "run")


def test_ema_ramps_up_to_its_configured_decay():
    cfg = profile("demo")  # ema_beta 0.999: half-life 693 steps
    decays = [ema_decay(cfg, step) for step in (1, 100, 1_000, 10_000, 100_000)]
    assert decays[0] < 1e-5  # the first EMA is the generator itself
    assert decays == sorted(decays)
    assert decays[1] == pytest.approx(0.5 ** (1 / 5))  # half-life 5% of 100 steps
    assert decays[-1] == cfg.ema_beta
    assert ema_decay(cfg.replace(ema_rampup=0), 1) == cfg.ema_beta
    assert ema_decay(cfg.replace(ema_beta=0), 10) == 0


def test_a_short_run_publishes_an_ema_near_its_last_generator(tmp_path, images):
    cfg = profile("tiny").replace(ema_beta=0.999)
    last = train(cfg, images, tmp_path / "ramped")
    frozen = train(cfg.replace(ema_rampup=0), images, tmp_path / "fixed")

    def gap(run):
        return max((a - b).abs().max().item() for a, b in zip(
            run.generator_ema.parameters(), run.generator.parameters(), strict=True))

    assert gap(last) < 0.5 * gap(frozen)
