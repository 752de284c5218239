"""WGAN generator/critic: shapes, validation, DCGAN init, spectral norm, self-attention placement, factories."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medgen.models.wgan import (
    DecoderGenerator,
    SelfAttention2d,
    WGANCritic,
    WGANGenerator,
    build_critic,
    build_generator,
)
from monai.networks.utils import normal_init


def _attention_input_sizes(net: nn.Module, x: torch.Tensor) -> list[int]:
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, inp, _out: sizes.append(inp[0].shape[-1]))
        for m in net.modules()
        if isinstance(m, SelfAttention2d)
    ]
    net(x)
    for h in hooks:
        h.remove()
    return sorted(sizes)


@pytest.mark.parametrize("image_size", [64, 128])
def test_generator_and_critic_shapes(image_size):
    torch.manual_seed(0)
    g = WGANGenerator(z_dim=8, g_channels=16, image_size=image_size, min_channels=4)
    c = WGANCritic(d_channels=4, image_size=image_size, max_channels=16)
    z = g.sample_latent(3)
    assert z.shape == (3, 8)
    x = g(z)
    assert x.shape == (3, 1, image_size, image_size)
    assert x.abs().max() <= 1.0  # Tanh output
    scores = c(x)
    assert scores.shape == (3,)
    feats = c.features(x)
    assert feats.shape == (3, 16 * 4 * 4)
    both = c(x, return_features=True)
    torch.testing.assert_close(both[0], scores)
    torch.testing.assert_close(both[1], feats)
    # channels halve from g_channels down to the floor
    convts = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [m.in_channels for m in convts][:3] == [16, 8, 4]
    assert convts[-1].out_channels == 1


def test_generator_accepts_4d_noise_and_rejects_wrong_size():
    g = WGANGenerator(z_dim=8, g_channels=8, image_size=64, min_channels=4).eval()
    z = torch.randn(2, 8)
    torch.testing.assert_close(g(z.view(2, 8, 1, 1)), g(z))
    with pytest.raises(ValueError, match="z of shape"):
        g(torch.randn(2, 9))


@pytest.mark.parametrize("bad", [32, 96, 512, 100])
def test_image_size_is_validated(bad):
    with pytest.raises(ValueError, match="power of two between 64 and 256"):
        WGANGenerator(z_dim=4, g_channels=8, image_size=bad)
    with pytest.raises(ValueError, match="power of two between 64 and 256"):
        WGANCritic(d_channels=4, image_size=bad)


def test_critic_has_no_sigmoid_no_batchnorm_and_unbounded_scores():
    c = WGANCritic(d_channels=4, image_size=64, self_attention_resolutions=(8,))
    kinds = {type(m) for m in c.modules()}
    assert not kinds & {nn.Sigmoid, nn.BatchNorm1d, nn.BatchNorm2d, nn.Tanh}
    assert nn.InstanceNorm2d in kinds
    norms = [m for m in c.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert all(m.affine for m in norms)
    with torch.no_grad():
        c.head.bias.fill_(5.0)  # a sigmoid/tanh output could never exceed 1
    assert (c(torch.randn(2, 1, 64, 64)) > 1.0).all()


def test_dcgan_init_statistics():
    torch.manual_seed(0)
    g = WGANGenerator(z_dim=64, g_channels=64, image_size=64)
    lin = g.fc[0].weight  # 64 x 1024 weights
    assert abs(lin.mean().item()) < 2e-3 and abs(lin.std().item() - 0.02) < 2e-3
    bn = g.fc[1]
    assert abs(bn.weight.mean().item() - 1.0) < 3e-3 and abs(bn.weight.std().item() - 0.02) < 3e-3
    assert torch.count_nonzero(bn.bias) == 0
    conv = next(m for m in g.modules() if isinstance(m, nn.ConvTranspose2d))
    assert abs(conv.weight.std().item() - 0.02) < 2e-3
    # MONAI's initialiser the generator applies, on a fresh layer with PyTorch's default (much wider) init
    layer = nn.Conv2d(32, 64, 3)
    layer.apply(normal_init)
    assert abs(layer.weight.std().item() - 0.02) < 2e-3 and torch.count_nonzero(layer.bias) == 0


def test_spectral_norm_bounds_largest_singular_value():
    torch.manual_seed(0)
    c = WGANCritic(d_channels=4, image_size=64, spectral_norm=True, self_attention_resolutions=(8,))
    layers = [m for m in c.modules() if isinstance(m, nn.Conv2d)]
    assert layers and all(hasattr(m, "parametrizations") for m in layers)
    with torch.no_grad():  # blow the raw weights up: only the normalisation can bring them back to ~1
        for m in layers:
            m.parametrizations.weight.original.mul_(10.0)
    c.train()
    for _ in range(10):  # power iteration advances one step per training forward
        c(torch.randn(2, 1, 64, 64))
    c.eval()
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        assert 0.9 <= sigma <= 1.05, (m, sigma)


@pytest.mark.parametrize("resolutions", [(), (8,), (8, 16)])
def test_self_attention_present_where_asked(resolutions):
    g = WGANGenerator(z_dim=4, g_channels=8, image_size=64, min_channels=4, self_attention_resolutions=resolutions)
    c = WGANCritic(d_channels=4, image_size=64, self_attention_resolutions=resolutions)
    assert _attention_input_sizes(g, torch.randn(2, 4)) == sorted(resolutions)
    assert _attention_input_sizes(c, torch.randn(2, 1, 64, 64)) == sorted(resolutions)


def test_attention_gate_starts_closed_and_receives_gradients():
    torch.manual_seed(0)
    c = WGANCritic(d_channels=4, image_size=64, self_attention_resolutions=(16,))
    attn = next(m for m in c.modules() if isinstance(m, SelfAttention2d))
    assert attn.gamma.item() == 0.0
    c(torch.randn(2, 1, 64, 64)).sum().backward()
    assert attn.gamma.grad is not None and attn.gamma.grad.abs().item() > 0


def test_attention_resolution_is_validated():
    with pytest.raises(ValueError, match=r"choose from \[4, 8, 16, 32\]"):
        WGANGenerator(z_dim=4, g_channels=8, image_size=64, self_attention_resolutions=(64,))
    with pytest.raises(ValueError, match=r"choose from \[32, 16, 8, 4\]"):
        WGANCritic(d_channels=4, image_size=64, self_attention_resolutions=(64,))


def test_factories_build_from_config_sections():
    g = build_generator(
        {"type": "dcgan", "z_dim": 6, "g_channels": 8, "min_channels": 4, "self_attention_resolutions": [16]},
        image_size=64,
    )
    assert isinstance(g, WGANGenerator) and g.z_dim == 6 and g.self_attention_resolutions == (16,)
    assert g(torch.randn(2, 6)).shape == (2, 1, 64, 64)
    c = build_critic({"d_channels": 4, "spectral_norm": True}, image_size=128)
    assert isinstance(c, WGANCritic) and c.image_size == 128 and c.spectral_norm
    assert build_generator({"z_dim": 6, "g_channels": 8, "image_size": 64}).image_size == 64  # type defaults to dcgan


def test_factories_reject_bad_config():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['g_channel'\]"):
        build_generator({"type": "dcgan", "g_channel": 8}, image_size=64)
    with pytest.raises(ValueError, match="generator.type='stylegan' is not known"):
        build_generator({"type": "stylegan"}, image_size=64)
    with pytest.raises(ValueError, match="disagrees with wgan_train.image_size"):
        build_critic({"d_channels": 4, "image_size": 64}, image_size=128)
    with pytest.raises(ValueError, match="norm must be 'instance' or 'none'"):
        build_critic({"d_channels": 4, "norm": "batch"}, image_size=64)


@pytest.mark.parametrize(
    "section",
    [
        {"type": "progressive_decoder", "z_dim": 16, "channel_progression": [8, 4, 1]},
        {"type": "conv_decoder", "z_dim": 16, "hidden_dims": [8, 8, 4, 4], "norm": "batch"},
    ],
)
def test_decoder_backbones_as_generators(section):
    pytest.importorskip(f"medgen.models.{section['type']}")
    torch.manual_seed(0)
    g = build_generator(section, image_size=64)
    assert isinstance(g, DecoderGenerator) and g.z_dim == 16 and g.image_size == 64
    x = g(g.sample_latent(2))
    assert x.shape == (2, 1, 64, 64) and x.abs().max() <= 1.0  # tanh by default for GAN data in [-1, 1]
    x.mean().backward()
    trainable = [p for p in g.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)  # nothing unused to stall DDP
    size_key = "input_size" if section["type"] == "progressive_decoder" else "output_size"
    with pytest.raises(ValueError, match="disagrees with wgan_train.image_size"):
        build_generator({**section, size_key: 128}, image_size=64)
