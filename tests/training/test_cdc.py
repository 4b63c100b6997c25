"""CDC: the loss math on real tiny generators, and the loss wired into real training steps."""

import pytest
import torch

from training.cdc import cdc_loss, frozen_source, generator_features
from training.checkpoint import load_checkpoint
from training.config import profile
from training.loop import train
from training.networks import Generator


@pytest.fixture
def generator():
    torch.manual_seed(0)
    return Generator(z_dim=16, resolution=32, base_channels=8, max_channels=32).train()


@pytest.fixture
def z():
    return torch.randn(6, 16, generator=torch.Generator().manual_seed(3))


@pytest.fixture
def images():
    return torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_features_are_block_outputs_and_the_image(generator, z):
    out, features = generator_features(generator, z)
    torch.testing.assert_close(out, generator(z))
    assert [f.shape[-1] for f in features] == [4, 8, 16, 32]
    assert [f.shape[1] for f in features] == [*generator.channels[:-1], 3]
    assert features[-1] is out


def test_identical_generators_give_zero_loss(generator, z):
    source = frozen_source(generator)
    _, adapted = generator_features(generator, z)
    _, reference = generator_features(source, z)
    assert cdc_loss(reference, adapted).item() == pytest.approx(0.0, abs=1e-6)


def test_changed_generator_gives_positive_loss_and_grads_only_to_it(generator, z):
    source = frozen_source(generator)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    _, adapted = generator_features(generator, z)
    with torch.no_grad():
        _, reference = generator_features(source, z)
    loss = cdc_loss(reference, adapted)
    assert loss.item() > 1e-4
    loss.backward()
    grads = [p.grad for p in generator.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(not p.requires_grad and p.grad is None for p in source.parameters())


def test_source_never_updates_its_running_statistics(generator, z):
    source = frozen_source(generator)
    before = {k: v.clone() for k, v in source.state_dict().items() if "running" in k}
    generator_features(source, z)
    for key, value in before.items():
        assert torch.equal(source.state_dict()[key], value), key


def test_loss_matches_a_hand_computed_kl():
    torch.manual_seed(1)
    s, a = torch.randn(4, 5), torch.randn(4, 5)

    def distribution(x):
        x = torch.nn.functional.normalize(x, dim=1)
        sim = x @ x.T
        rows = [torch.cat([sim[i, :i], sim[i, i + 1 :]]) for i in range(4)]
        return torch.stack([torch.softmax(r, 0) for r in rows])

    p, q = distribution(s), distribution(a)
    expected = (p * (p.log() - q.log())).sum(1).mean()
    torch.testing.assert_close(cdc_loss([s], [a]), expected)


def test_bad_inputs_are_refused(generator):
    with pytest.raises(ValueError, match="at least 3"):
        cdc_loss([torch.zeros(2, 4)], [torch.zeros(2, 4)])
    with pytest.raises(ValueError, match="same non-empty layers"):
        cdc_loss([], [])
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        generator_features(generator, torch.zeros(2, 8))


def test_cdc_training_resumes_exactly_without_the_base(tmp_path, images, monkeypatch):
    monkeypatch.setenv("BOXGEN_DEVICE", "cpu")
    cfg = profile("tiny").replace(iterations=2)
    train(cfg, images, tmp_path / "base")
    base = load_checkpoint(tmp_path / "base")

    tuned = cfg.replace(iterations=4, cdc_weight=5.0, deterministic=True)
    straight = train(tuned, images, tmp_path / "straight", base=base)
    train(tuned.replace(iterations=2), images, tmp_path / "resumed", base=base)
    # The resume gets no base: the frozen source must come from the run's own checkpoint.
    resumed = train(tuned, images, tmp_path / "resumed")
    for a, b in zip(straight.generator.parameters(), resumed.generator.parameters(), strict=True):
        assert torch.equal(a, b)
    for name, value in base["generator"].items():
        if not name.endswith("num_batches_tracked"):  # counts forwards, unused at momentum 0
            assert torch.equal(resumed.generator_source.state_dict()[name], value), name
    assert "generator_source" in load_checkpoint(tmp_path / "resumed")

    # The loss changes training: the same run without CDC ends elsewhere.
    plain = train(tuned.replace(cdc_weight=0.0), images, tmp_path / "plain", base=base)
    assert plain.generator_source is None
    assert not all(
        torch.equal(a, b)
        for a, b in zip(straight.generator.parameters(), plain.generator.parameters(), strict=True)
    )


def test_cdc_without_a_base_is_refused(tmp_path, images):
    with pytest.raises(ValueError, match="needs a base model"):
        train(profile("tiny").replace(iterations=1, cdc_weight=1.0), images, tmp_path / "run")
    with pytest.raises(ValueError, match="batch_size >= 3"):
        train(profile("tiny").replace(batch_size=2, cdc_weight=1.0), images, tmp_path / "r2")
