"""Tests for training/networks.py: shapes at all resolutions, the thesis' tables, freezing, ONNX."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from training.networks import Critic, Generator, count_parameters

RESOLUTIONS = (32, 64, 128, 256)
SMALL = {"base_channels": 4, "max_channels": 16}


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_generator_output_shape_and_range(resolution):
    generator = Generator(z_dim=8, resolution=resolution, **SMALL).eval()
    with torch.no_grad():
        images = generator(torch.randn(2, 8))
    assert images.shape == (2, 3, resolution, resolution)
    assert images.abs().max() <= 1.0  # Tanh output
    assert generator.z_dim == 8 and generator.resolution == resolution


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("norm", ["layer", "batch", "none"])
def test_critic_gives_one_score_per_image(resolution, norm):
    critic = Critic(resolution=resolution, norm=norm, **SMALL)
    scores = critic(torch.randn(3, 3, resolution, resolution))
    assert scores.shape == (3,)
    # log2(R / 4) stride-2 blocks bring R down to 4; the head maps 4x4 to 1x1.
    assert len(critic.blocks) == int(np.log2(resolution // 4))
    assert critic.features(torch.randn(2, 3, resolution, resolution)).shape[-2:] == (4, 4)


@pytest.mark.parametrize("norm, norm_type", [("layer", nn.GroupNorm), ("batch", nn.BatchNorm2d)])
def test_critic_normalises_from_the_second_block(norm, norm_type):
    critic = Critic(resolution=64, norm=norm, **SMALL)
    norms = [
        [m for m in block.modules() if isinstance(m, nn.GroupNorm | nn.BatchNorm2d)]
        for block in critic.blocks
    ]
    assert norms[0] == []
    assert all(len(found) == 1 and isinstance(found[0], norm_type) for found in norms[1:])
    if norm == "layer":
        # One group: normalised over (C, H, W) of each sample, as LayerNorm.
        assert all(found[0].num_groups == 1 for found in norms[1:])


def test_layer_norm_critic_scores_samples_independently():
    # The WGAN-GP penalty needs per-sample gradients, so no statistic may mix the batch.
    critic = Critic(resolution=32, norm="layer", **SMALL)
    batch = torch.randn(4, 3, 32, 32)
    together = critic(batch)
    alone = torch.cat([critic(batch[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone)


def test_thesis_generator_matches_the_table():
    generator = Generator()  # z 128, 256², base 64, max 512
    assert generator.channels == (512, 512, 512, 256, 128, 64, 3)
    convs = [m for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (128, 512),
        (512, 512),
        (512, 512),
        (512, 256),
        (256, 128),
        (128, 64),
        (64, 3),
    ]
    assert all(c.kernel_size == (4, 4) for c in convs)
    assert [c.stride for c in convs] == [(1, 1)] + [(2, 2)] * 6
    assert sum(isinstance(m, nn.BatchNorm2d) for m in generator.modules()) == 6
    assert isinstance(list(generator.modules())[-1], nn.Tanh)
    # 4x4 kernels without bias before BatchNorm (scale + shift), a bias on the RGB output.
    expected = sum(
        16 * c_in * c_out + 2 * c_out
        for c_in, c_out in [(128, 512), (512, 512), (512, 512), (512, 256), (256, 128), (128, 64)]
    )
    expected += 16 * 64 * 3 + 3
    assert count_parameters(generator) == expected


def test_thesis_critic_matches_the_table():
    critic = Critic(norm="layer")
    assert critic.channels == (64, 128, 256, 512, 512, 512)
    convs = [m for m in critic.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [
        (3, 64, (2, 2)),
        (64, 128, (2, 2)),
        (128, 256, (2, 2)),
        (256, 512, (2, 2)),
        (512, 512, (2, 2)),
        (512, 512, (2, 2)),
        (512, 1, (1, 1)),
    ]
    assert all(c.kernel_size == (4, 4) for c in convs)
    slopes = {m.negative_slope for m in critic.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}


def test_weights_are_dcgan_initialised():
    torch.manual_seed(0)
    generator = Generator(z_dim=128, resolution=64, base_channels=32, max_channels=256)
    weights = torch.cat(
        [m.weight.flatten() for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    )
    assert abs(weights.std().item() - 0.02) < 0.001
    assert abs(weights.mean().item()) < 0.001


def test_init_args_rebuild_the_same_architecture():
    critic = Critic(resolution=64, norm="batch", **SMALL)
    generator = Generator(z_dim=16, resolution=64, **SMALL)
    Critic(**critic.init_args()).load_state_dict(critic.state_dict())
    Generator(**generator.init_args()).load_state_dict(generator.state_dict())


@pytest.mark.parametrize("k", [0, 1, 3])
def test_freeze_blocks_freezes_exactly_the_first_k(k):
    critic = Critic(resolution=64, **SMALL)  # 4 blocks
    critic.freeze_blocks(k)
    for i, block in enumerate(critic.blocks):
        assert all(p.requires_grad == (i >= k) for p in block.parameters())
    assert all(p.requires_grad for p in critic.head.parameters())
    critic(torch.randn(2, 3, 64, 64)).sum().backward()
    for i, block in enumerate(critic.blocks):
        assert all((p.grad is None) == (i < k) for p in block.parameters())
    frozen = sum(count_parameters(b) for b in critic.blocks[:k])
    assert count_parameters(critic, trainable_only=True) == count_parameters(critic) - frozen


def test_freeze_blocks_can_be_undone_and_checks_its_range():
    critic = Critic(resolution=32, **SMALL)  # 3 blocks
    critic.freeze_blocks(3)
    critic.freeze_blocks(0)
    assert all(p.requires_grad for p in critic.parameters())
    with pytest.raises(ValueError, match="0 to 3"):
        critic.freeze_blocks(4)


@pytest.mark.parametrize("resolution", [16, 48, 512])
def test_bad_resolution_is_refused(resolution):
    with pytest.raises(ValueError, match="power of two from 32 to 256"):
        Generator(resolution=resolution)
    with pytest.raises(ValueError, match="power of two from 32 to 256"):
        Critic(resolution=resolution)


def test_bad_norm_and_z_shape_are_refused():
    with pytest.raises(ValueError, match="valid: layer, batch, none"):
        Critic(norm="instance")
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        Generator(z_dim=8, resolution=32, **SMALL)(torch.randn(2, 9))


def _export(model: nn.Module, example: torch.Tensor, path, input_name: str) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=[input_name],
        output_names=["out"],
        dynamic_axes={input_name: {0: "batch"}, "out": {0: "batch"}},
    )


# GroupNorm's batch-size check warns while tracing; it does not affect the exported graph.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_networks_export_to_onnx_with_dynamic_batch(tmp_path, norm):
    torch.manual_seed(0)
    generator = Generator(z_dim=8, resolution=32, **SMALL).eval()
    critic = Critic(resolution=32, norm=norm, **SMALL).eval()
    _export(generator, torch.randn(1, 8), tmp_path / "g.onnx", "z")
    _export(critic, torch.randn(1, 3, 32, 32), tmp_path / "c.onnx", "image")

    z = torch.randn(5, 8)  # another batch size than the export's
    with torch.no_grad():
        images = generator(z)
        scores = critic(images)
    g_session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    c_session = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    (onnx_images,) = g_session.run(None, {"z": z.numpy()})
    (onnx_scores,) = c_session.run(None, {"image": images.numpy()})
    np.testing.assert_allclose(onnx_images, images.numpy(), atol=1e-5)
    np.testing.assert_allclose(onnx_scores, scores.numpy(), atol=1e-5)
