"""ConvDecoder: every option in 2D and 3D, exact output sizes, config round trip."""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks.blocks import SubpixelUpsample
from monai.networks.blocks.spatialattention import SpatialAttentionBlock
from torch import nn

from medgen.config import ConfigError
from medgen.models import ConvDecoder, ConvDecoderConfig

BASE = dict(latent_dim=8, hidden_dims=(16, 8))

# One case per option; each is built in 2D (32x32) and 3D (16^3).
OPTIONS = {
    "default": {},
    "norm_group": dict(norm="group", norm_num_groups=4),
    "norm_instance": dict(norm="instance"),
    "norm_layer": dict(norm="layer"),
    "norm_none": dict(norm="none"),
    "upsample_nearest": dict(upsample="nearest"),
    "upsample_bilinear": dict(upsample="bilinear"),
    "upsample_trilinear_name": dict(upsample="trilinear"),
    "upsample_pixel_shuffle": dict(upsample="pixel_shuffle"),
    "kernel_4": dict(kernel_size=4),
    "kernel_5_padding_1": dict(kernel_size=5, padding=1),
    "padding_0": dict(padding=0),
    "stride_3": dict(stride=3),
    "stride_1": dict(stride=1),
    "dilation_2": dict(dilation=2),
    "bias_off": dict(bias=False),
    "residual": dict(num_res_blocks=2),
    "skip": dict(skip_connections=True),
    "dense": dict(num_dense_layers=2, dense_growth_rate=4),
    "spectral_norm": dict(spectral_norm=True),
    "separable": dict(separable=True),
    "separable_pixel_shuffle": dict(separable=True, upsample="pixel_shuffle"),
    "attention": dict(attention_heads=2),  # resolution filled in per dims below
    "dropout_leaky_tanh": dict(
        dropout_rate=0.3, activation=["leakyrelu", {"negative_slope": 0.2}], final_activation="tanh"
    ),
    "init_size_short": dict(init_size=3),
    "everything": dict(
        num_res_blocks=1,
        skip_connections=True,
        num_dense_layers=1,
        spectral_norm=True,
        norm="group",
        upsample="pixel_shuffle",
        dilation=2,
    ),
}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_option_gives_exact_shape_and_gradients(option, spatial_dims):
    size = 32 if spatial_dims == 2 else 16
    kwargs = dict(BASE, output_size=size, spatial_dims=spatial_dims, **OPTIONS[option])
    if option == "attention":
        kwargs["attention_resolutions"] = (size // 2,)
    torch.manual_seed(0)
    model = ConvDecoder(**kwargs)
    out = model(torch.randn(2, 8))
    assert out.shape == (2, 1) + (size,) * spatial_dims
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "spatial_dims, output_size, upsample",
    [
        (2, 31, "transpose"),
        (2, 33, "pixel_shuffle"),
        (2, (17, 23), "nearest"),
        (2, (7, 50), "bilinear"),
        (2, 1, "transpose"),
        (3, 15, "transpose"),
        (3, (9, 11, 13), "pixel_shuffle"),
        (3, 7, "trilinear"),
    ],
)
def test_odd_and_non_square_output_sizes(spatial_dims, output_size, upsample):
    model = ConvDecoder(**BASE, output_size=output_size, spatial_dims=spatial_dims, upsample=upsample)
    expected = (output_size,) * spatial_dims if isinstance(output_size, int) else output_size
    assert model(torch.randn(1, 8)).shape == (1, 1, *expected)


@pytest.mark.parametrize(
    "extra",
    [
        dict(),
        dict(kernel_size=4),
        dict(padding=0),
        dict(padding=3, dilation=2),
        dict(stride=3, kernel_size=5),
        dict(upsample="nearest", padding=0),
        dict(upsample="pixel_shuffle", padding=2),
        dict(init_size=5),
    ],
)
def test_computed_stage_sizes_match_the_real_feature_maps(extra):
    model = ConvDecoder(**BASE, output_size=30, **extra)
    seen = []
    for stage in model.stages:
        stage.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[2:])))
    assert model(torch.randn(1, 8)).shape == (1, 1, 30, 30)
    assert seen == model.stage_sizes


def test_auto_init_size_covers_output_and_crops_excess():
    model = ConvDecoder(latent_dim=8, hidden_dims=(16, 8, 8), output_size=(50, 64))
    assert model.init_size == (7, 8)  # 7 * 8 = 56 >= 50, 8 * 8 = 64
    assert model.stage_sizes[-1] == (56, 64)
    assert type(model.resize).__name__ == "CropPad"


NORM_TYPES = {
    "batch": nn.BatchNorm2d,
    "instance": nn.InstanceNorm2d,
    "group": nn.GroupNorm,
    "layer": nn.GroupNorm,
}


@pytest.mark.parametrize("norm", ["batch", "group", "instance", "layer", "none"])
def test_each_norm_kind_builds_that_norm(norm):
    model = ConvDecoder(**BASE, output_size=16, norm=norm, norm_num_groups=4)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm))]
    if norm == "none":
        assert norms == []
        return
    assert norms and all(isinstance(m, NORM_TYPES[norm]) for m in norms)
    if norm == "layer":
        assert all(m.num_groups == 1 for m in norms)
    if norm == "group":
        assert {m.num_groups for m in norms} == {4}


@pytest.mark.parametrize(
    "upsample, present, absent",
    [
        ("transpose", nn.ConvTranspose2d, nn.Upsample),
        ("nearest", nn.Upsample, nn.ConvTranspose2d),
        ("bilinear", nn.Upsample, nn.ConvTranspose2d),
        ("pixel_shuffle", SubpixelUpsample, nn.ConvTranspose2d),
    ],
)
def test_each_upsampling_kind_uses_its_layer(upsample, present, absent):
    model = ConvDecoder(**BASE, output_size=16, upsample=upsample)
    mods = list(model.modules())
    assert sum(isinstance(m, present) for m in mods) == len(BASE["hidden_dims"])
    assert not any(isinstance(m, absent) for m in mods)
    if upsample in ("nearest", "bilinear"):
        assert {m.mode for m in mods if isinstance(m, nn.Upsample)} == {upsample}


def test_trilinear_interpolation_in_3d():
    model = ConvDecoder(**BASE, output_size=8, spatial_dims=3, upsample="bilinear")
    assert {m.mode for m in model.modules() if isinstance(m, nn.Upsample)} == {"trilinear"}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_spectral_norm_bounds_largest_singular_value(spatial_dims):
    torch.manual_seed(0)
    model = ConvDecoder(
        **BASE,
        output_size=8,
        spatial_dims=spatial_dims,
        spectral_norm=True,
        num_res_blocks=1,
        attention_resolutions=(8,),
        skip_connections=True,
    )
    model.train()
    for _ in range(5):  # power iterations refine the estimate at every training forward
        model(torch.randn(2, 8))
    weighted = [
        m
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    ]
    assert weighted and all(hasattr(m, "parametrizations") for m in weighted)
    for m in weighted:
        dim = m.parametrizations.weight[0].dim
        w = m.weight.detach().movedim(dim, 0).flatten(1)
        sigma = torch.linalg.matrix_norm(w, ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.05), m
    plain = ConvDecoder(**BASE, output_size=8, spatial_dims=spatial_dims)
    sigmas = [torch.linalg.matrix_norm(plain.project.weight.detach(), ord=2).item()]
    assert abs(sigmas[0] - 1.0) > 0.05  # without it the weights are not normalised


def test_attention_only_where_asked_and_error_for_unknown_resolution():
    model = ConvDecoder(
        latent_dim=8, hidden_dims=(16, 16, 8), output_size=32, attention_resolutions=(8, 32), attention_heads=4
    )
    has_attn = [isinstance(stage.attn, SpatialAttentionBlock) for stage in model.stages]
    assert [max(s) for s in model.stage_sizes] == [8, 16, 32]
    assert has_attn == [True, False, True]
    assert model.stages[0].attn.attn.num_heads == 4
    with pytest.raises(ConfigError, match=r"attention_resolutions=\[12\]: \[12\] match no stage.*\[8, 16, 32\]"):
        ConvDecoder(latent_dim=8, hidden_dims=(16, 16, 8), output_size=32, attention_resolutions=(12,))
    with pytest.raises(ConfigError, match="attention_heads=3 must divide the 8 channels"):
        ConvDecoder(
            latent_dim=8, hidden_dims=(16, 16, 8), output_size=32, attention_resolutions=(32,), attention_heads=3
        )


def test_residual_skip_dense_separable_dilated_structure():
    model = ConvDecoder(
        **BASE,
        output_size=16,
        num_res_blocks=2,
        skip_connections=True,
        num_dense_layers=3,
        dense_growth_rate=4,
        separable=True,
        dilation=2,
    )
    for stage, c in zip(model.stages, BASE["hidden_dims"], strict=True):
        assert len(stage.res) == 2
        assert stage.shortcut is not None
        dense_block, transition = stage.dense[0], stage.dense[1]
        assert len(list(dense_block.children())) == 3
        assert transition.conv.in_channels == c + 3 * 4 and transition.conv.out_channels == c
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert all(
        m.dilation == (2, 2)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.kernel_size != (1, 1)
    )


def test_skip_connection_carries_the_lower_resolution_input():
    torch.manual_seed(0)
    model = ConvDecoder(**BASE, output_size=16, skip_connections=True).eval()
    stage = model.stages[0]
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        with_skip = stage(x)
        stage.shortcut = None
        without = stage(x)
        expected = torch.nn.functional.interpolate(x, size=(8, 8), mode="nearest")  # 16 -> 16 channels: identity
    torch.testing.assert_close(with_skip - without, expected)


def test_dropout_bias_activation_and_final_activation():
    model = ConvDecoder(
        **BASE,
        output_size=16,
        dropout_rate=0.5,
        bias=False,
        final_activation="none",
        activation=("leakyrelu", {"negative_slope": 0.2}),
    )
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.5}
    assert any(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(m.bias is None for m in convs if m is not model.head.conv)
    z = torch.randn(2, 8) * 10
    model.eval()
    torch.testing.assert_close(model(z), model(z))  # dropout off in eval
    model.train()
    assert not torch.equal(model(z), model(z))  # and on in training
    for final, lo, hi in (("sigmoid", 0.0, 1.0), ("tanh", -1.0, 1.0)):
        out = ConvDecoder(**BASE, output_size=16, final_activation=final)(z)
        assert out.min() >= lo and out.max() <= hi


def test_config_json_round_trip(tmp_path):
    cfg = ConvDecoderConfig(
        latent_dim=8,
        hidden_dims=(16, 8),
        output_size=(20, 24),
        norm="group",
        norm_num_groups=4,
        upsample="pixel_shuffle",
        num_res_blocks=1,
        attention_resolutions=(12,),
        spectral_norm=True,
        activation=("leakyrelu", {"negative_slope": 0.1}),
        final_activation="tanh",
    )
    path = tmp_path / "decoder.json"
    cfg.to_json(path)
    data = json.loads(path.read_text())
    assert data["hidden_dims"] == [16, 8] and data["output_size"] == [20, 24]
    assert ConvDecoderConfig.from_json(path) == cfg
    torch.manual_seed(0)
    model = ConvDecoder.from_config(cfg).eval()
    for source in (path, data, ConvDecoderConfig.from_dict(data)):
        clone = ConvDecoder.from_config(source).eval()
        assert clone.config == cfg
        clone.load_state_dict(model.state_dict())
        z = torch.randn(2, 8)
        with torch.no_grad():
            torch.testing.assert_close(clone(z), model(z))


def test_config_accepts_use_batch_norm_and_rejects_unknown_keys():
    assert ConvDecoderConfig.from_dict({"use_batch_norm": False}).norm == "none"
    assert ConvDecoderConfig.from_dict({"use_batch_norm": True}).norm == "batch"
    with pytest.raises(ConfigError, match="unknown config key hiden_dims; did you mean hidden_dims"):
        ConvDecoder.from_config({"hiden_dims": [8]})
    # inside a larger config the key is named where it sits
    with pytest.raises(ConfigError, match=r"^generator.backbone.dropout_rate=1.0 must be in \[0, 1\)$"):
        ConvDecoderConfig.from_dict({"dropout_rate": 1.0}, prefix="generator.backbone.")


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(norm="weird"), "norm"),
        (dict(upsample="deconv"), "upsample"),
        (dict(final_activation="relu"), "final_activation"),
        (dict(dropout_rate=1.0), "dropout_rate"),
        (dict(hidden_dims=()), "hidden_dims"),
        (dict(output_size=(8, 8, 8)), "output_size"),
        (dict(activation="foo"), "activation"),
        (dict(stride=0), "stride"),
    ],
)
def test_invalid_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        ConvDecoder(**{**BASE, "output_size": 16, **kwargs})


def test_wrong_latent_length_is_reported():
    with pytest.raises(ValueError, match="latent vectors of length 8"):
        ConvDecoder(**BASE, output_size=16)(torch.randn(2, 9))
