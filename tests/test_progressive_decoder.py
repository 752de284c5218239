"""ProgressiveDecoder and CropPad: architecture, configuration modes, inference preparation, checkpointing."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from medgen.config import ConfigError
from medgen.models import CropPad, ProgressiveDecoder
from medgen.models.progressive_decoder import ProgressiveDecoderConfig

# The specified shape table for input_size=1024, output_size=512.
SEED_TABLE_1024_512 = [
    ("latent", (1, 1024, 1, 1)),
    ("initial", (1, 512, 4, 4)),
    ("upsample 1", (1, 256, 8, 8)),
    ("upsample 2", (1, 128, 16, 16)),
    ("upsample 3", (1, 64, 32, 32)),
    ("upsample 4", (1, 32, 64, 64)),
    ("upsample 5", (1, 16, 128, 128)),
    ("upsample 6", (1, 8, 256, 256)),
    ("upsample 7", (1, 4, 512, 512)),
    ("refinement 1", (1, 2, 512, 512)),
    ("refinement 2", (1, 1, 512, 512)),
    ("crop_pad(512)", (1, 1, 512, 512)),
    ("crop_pad(1024)", (1, 1, 1024, 1024)),
]


def _train_steps(model: ProgressiveDecoder, steps: int = 3) -> ProgressiveDecoder:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model().mean().backward()
        opt.step()
    return model


# ------------------------------------------------------------------------------------------- CropPad
@pytest.mark.parametrize(
    "shape, size, expected",
    [
        ((1, 1, 5, 12), 8, (1, 1, 8, 8)),
        ((2, 3, 7, 7), (4, 9), (2, 3, 4, 9)),
        ((1, 1, 6, 5, 3), 4, (1, 1, 4, 4, 4)),
        ((1, 1, 9, 9), 9, (1, 1, 9, 9)),
    ],
)
def test_croppad_shapes(shape, size, expected):
    assert CropPad(size)(torch.rand(shape)).shape == expected


@pytest.mark.parametrize("small, large", [((3, 5), (8, 8)), ((4, 4), (7, 9)), ((2, 3, 5), (6, 6, 6))])
def test_croppad_pad_then_crop_is_identity_and_pads_zeros(small, large):
    x = torch.rand(1, 1, *small) + 1.0
    padded = CropPad(large)(x)
    assert torch.equal(CropPad(small)(padded), x)
    assert padded.sum().item() == pytest.approx(x.sum().item(), rel=1e-6)  # padding is zeros


def test_croppad_crops_the_centre():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert torch.equal(CropPad(2)(x), x[..., 2:4, 2:4])


def test_croppad_rejects_bad_size():
    with pytest.raises(ValueError, match="positive"):
        CropPad(0)


# --------------------------------------------------------------------------------- seed architecture
def test_default_architecture_matches_seed_table_without_allocating():
    # meta tensors carry shapes only: the 1024^2 forward allocates nothing
    with torch.device("meta"):
        model = ProgressiveDecoder(input_size=1024, output_size=512)
    assert model.latent_channels == 1024 and model.num_upsample_layers == 7
    assert model.channel_progression == [512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert model.layer_shapes() == SEED_TABLE_1024_512

    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape)))
    out = model()
    assert out.device.type == "meta"
    assert seen == [shape for _, shape in SEED_TABLE_1024_512[1:11]]
    assert tuple(out.shape) == SEED_TABLE_1024_512[-1][1]
    # transposed convolutions for 1 -> 4 and every doubling, 3x3 convolutions for the refinement
    assert model.initial.conv.kernel_size == (4, 4) and model.initial.conv.stride == (1, 1)
    assert all(b.conv.kernel_size == (4, 4) and b.conv.stride == (2, 2) for b in model.upsample)
    assert all(b.conv.kernel_size == (3, 3) for b in model.refinement)


def test_output_is_object_centred_in_grid():
    torch.manual_seed(0)
    model = ProgressiveDecoder(input_size=32, output_size=20).eval()
    with torch.no_grad():
        out = model()
    assert out.shape == (1, 1, 32, 32)
    inner = out[..., 6:26, 6:26]
    assert (inner > 0).all() and (inner < 1).all()  # sigmoid inside the object
    assert out.abs().sum() == pytest.approx(inner.abs().sum().item(), rel=1e-6)  # zeros outside


# ------------------------------------------------------------------------------------ the five modes
def _modes(tmp_path):
    cfg = dict(
        input_size=64,
        output_size=48,
        latent_channels=64,
        hidden_channels=[32, 16, 8, 4, 2, 1],
        activation="relu",
        use_batch_norm=True,
        init_method="xavier",
        output_activation="sigmoid",
    )
    path = tmp_path / "pd.json"
    ProgressiveDecoderConfig.from_dict(cfg).to_json(path)
    return {
        "automatic": (
            lambda: ProgressiveDecoder(input_size=64, output_size=48),
            dict(latent_channels=64, num_upsample_layers=4),
        ),
        "manual_latent": (
            lambda: ProgressiveDecoder(64, 48, latent_channels=128),
            dict(latent_channels=128, channel_progression=[64, 32, 16, 8, 4, 2, 1]),
        ),
        "manual_progression": (
            lambda: ProgressiveDecoder(64, 48, channel_progression=[32, 16, 1]),
            dict(num_upsample_layers=4, channel_progression=[32, 16, 1]),
        ),
        "full_manual": (
            lambda: ProgressiveDecoder(
                64, 48, latent_channels=32, channel_progression=[32, 16, 8, 8, 4, 2, 1], num_upsample_layers=5
            ),
            dict(latent_channels=32, num_upsample_layers=5),
        ),
        "config_object": (
            lambda: ProgressiveDecoder.from_config(ProgressiveDecoderConfig.from_dict(cfg)),
            dict(init_method="xavier"),
        ),
        "config_dict": (lambda: ProgressiveDecoder.from_config(cfg), dict(channel_progression=[32, 16, 8, 4, 2, 1])),
        "config_json": (lambda: ProgressiveDecoder.from_config(path), dict(use_bn=True)),
    }


@pytest.mark.parametrize(
    "mode",
    ["automatic", "manual_latent", "manual_progression", "full_manual", "config_object", "config_dict", "config_json"],
)
def test_configuration_modes_construct_and_generate(mode, tmp_path):
    build, expected = _modes(tmp_path)[mode]
    model = build()
    for key, value in expected.items():
        assert getattr(model.config, key) == value, key
    out = model()
    assert out.shape == (1, 1, 64, 64)
    out.mean().backward()
    assert model.latent.grad is not None and model.latent.grad.abs().sum() > 0


def test_short_progression_repeats_last_hidden_channels():
    model = ProgressiveDecoder(64, 48, channel_progression=[32, 16, 1])
    assert [b.conv.out_channels for b in model.upsample] == [16, 16, 16, 16]
    assert [b.conv.out_channels for b in model.refinement] == [1]


def test_non_power_of_two_output_is_cropped():
    model = ProgressiveDecoder(64, 37)
    assert model.num_upsample_layers == 4  # 4 * 2**4 = 64 >= 37
    assert model.layer_shapes()[-2] == ("crop_pad(37)", (1, 1, 37, 37))
    assert model().shape == (1, 1, 64, 64)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_size=1000), "power of two"),
        (dict(input_size=64, output_size=65), "must be <= input_size"),
        (dict(input_size=64, channel_progression=[16, 8, 2]), "must end with 1"),
        (dict(input_size=64, channel_progression=[1]), "must end with 1"),
        (dict(input_size=64, num_upsample_layers=2), "use at least 4"),
        (dict(input_size=64, output_activation="softplus"), "output_activation"),
        (dict(input_size=64, spatial_dims=1), "spatial_dims"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ProgressiveDecoder(**kwargs)


def test_from_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown config key latent_size"):
        ProgressiveDecoder.from_config({"input_size": 64, "latent_size": 3})
    with pytest.raises(ConfigError, match="config key input_size is required"):
        ProgressiveDecoder.from_config({"output_size": 64})
    with pytest.raises(ConfigError, match=r"^generator.backbone.input_size=96 must be a power of two"):
        ProgressiveDecoderConfig.from_dict({"input_size": 96}, prefix="generator.backbone.")


def test_from_config_json_round_trip_and_state_dict(tmp_path):
    torch.manual_seed(0)
    model = ProgressiveDecoder(64, 40, latent_channels=32, channel_progression=[16, 8, 4, 1], output_activation="tanh")
    _train_steps(model)
    path = tmp_path / "model.json"
    model.config.to_json(path)
    assert json.loads(path.read_text())["output_activation"] == "tanh"
    clone = ProgressiveDecoder.from_config(path)
    assert clone.config == model.config
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    with torch.no_grad():
        assert torch.equal(model(), clone())


def test_state_dict_loads_across_equal_architectures_only():
    torch.manual_seed(1)
    a = _train_steps(ProgressiveDecoder(32, 24))
    torch.manual_seed(2)
    b = ProgressiveDecoder(32, 24)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(), b())
    with pytest.raises(RuntimeError):
        ProgressiveDecoder(32, 24, latent_channels=16).load_state_dict(a.state_dict())


# ------------------------------------------------------------------------------ inference preparation
@pytest.mark.parametrize("spatial_dims, channels_last", [(2, True), (2, False), (3, True)])
def test_prepare_for_inference_matches_eval_and_removes_batchnorm(spatial_dims, channels_last):
    torch.manual_seed(0)
    size = 32 if spatial_dims == 2 else 16
    model = _train_steps(ProgressiveDecoder(size, size - 4, latent_channels=32, spatial_dims=spatial_dims)).eval()
    assert any(isinstance(m, _BatchNorm) for m in model.modules())
    with torch.no_grad():
        expected = model()
    assert model.prepare_for_inference(channels_last=channels_last) is model
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    with torch.no_grad():
        got = model()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_fuse_requires_eval_mode():
    with pytest.raises(RuntimeError, match="eval"):
        ProgressiveDecoder(16).fuse_conv_bn()


def test_compile_returns_self_and_compiles_generation():
    model = ProgressiveDecoder(16)
    assert model.compile("default") is model
    assert model._compiled_decode is not None


def test_benchmark_reports_time_fps_parameters():
    model = ProgressiveDecoder(16).eval()
    result = model.benchmark(num_iterations=2, warmup=1)
    assert {"avg_time_ms", "fps", "num_parameters"} <= result.keys()
    assert result["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert result["avg_time_ms"] > 0 and result["fps"] > 0
    assert "memory_mb" not in result  # CPU: not measurable


# ---------------------------------------------------------------------------------- precision, memory
def test_generate_fp32_is_float32_with_amp():
    torch.manual_seed(0)
    model = ProgressiveDecoder(32, 24, use_amp=True).eval()
    with torch.no_grad():
        amp_out = model()
        fp32_out = model.generate_fp32()
    assert amp_out.dtype != torch.float32  # autocast is active in forward (bfloat16 on CPU)
    assert fp32_out.dtype == torch.float32
    model.use_amp = False
    with torch.no_grad():
        assert torch.equal(model(), fp32_out)
    torch.testing.assert_close(amp_out.float(), fp32_out, atol=2e-2, rtol=0)


def test_gradient_checkpointing_gives_same_gradients_and_statistics():
    torch.manual_seed(0)
    plain = ProgressiveDecoder(32, 28, latent_channels=32).train()
    ckpt = copy.deepcopy(plain)
    ckpt.enable_gradient_checkpointing()
    calls = {"plain": 0, "ckpt": 0}
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        for block in model.blocks:
            block.register_forward_pre_hook(lambda *a, n=name: calls.__setitem__(n, calls[n] + 1))
    target = torch.rand(1, 1, 32, 32)
    for model in (plain, ckpt):
        ((model() - target) ** 2).mean().backward()
    n = len(plain.blocks)
    assert calls == {"plain": n, "ckpt": 2 * n}  # checkpointing really re-ran the blocks in backward
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)
    for (name, b), c in zip(plain.named_buffers(), ckpt.buffers(), strict=True):
        torch.testing.assert_close(c, b, msg=name)  # BatchNorm statistics updated once, not twice
