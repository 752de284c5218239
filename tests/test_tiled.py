"""Tiled encode/decode (medgen.models.tiled): equal to the whole-image pass where the model allows it,
bounded work per tile, seams measured, MONAI's block forwards pinned, and `medgen decode` as the reverse of
`medgen encode`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

import pytest
import torch

from conftest import TINY
from medgen.cli import main
from medgen.config import AutoencoderDef, load_config, to_dict
from medgen.io import read_image, write_image
from medgen.io.checkpoint import save_checkpoint
from medgen.models.autoencoder import build_autoencoder
from medgen.metrics.seams import seam_ratio
from medgen.models.tiled import Tiling, output_borders, tile_grid, tiled_decode, tiled_encode, tiled_reconstruct

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _model(dims: int, attention: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    ae = AutoencoderDef(spatial_dims=dims, channels=(8, 16), latent_channels=2, num_res_blocks=1, norm_num_groups=4,
                        attention_levels=(False, attention), with_encoder_nonlocal_attn=attention,
                        with_decoder_nonlocal_attn=attention)
    return build_autoencoder(ae).eval()


def _smooth(shape, seed=0) -> torch.Tensor:
    """A smooth random image (1, 1, *shape) in [0, 1] with some fine texture."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    img = sum(np.sin((3 + 2 * i) * np.pi * g + rng.uniform(0, 6)) for i, g in enumerate(grids))
    img = 0.5 + 0.15 * img + 0.03 * rng.normal(size=shape)
    return torch.as_tensor(img, dtype=torch.float32).clamp(0, 1)[None, None]


# the overlap covers the tiny model's receptive field (about 11 pixels) beyond the cross-fade
@pytest.mark.parametrize("dims, shape, tile, overlap", [(2, (96, 136), 64, 48), (3, (72, 20, 24), 56, 48)])
def test_without_attention_tiles_equal_the_whole_image(dims, shape, tile, overlap):
    model = _model(dims, attention=False)
    x = _smooth(shape)
    tiling = Tiling.of(tile, overlap, dims, align=2, norm="image")
    assert len(tile_grid(shape, tiling, 2)[0].starts) >= 3
    with torch.no_grad():
        z_whole, s_whole = model.encode(x)
        y_whole = model.decode(z_whole)
    z, s = tiled_encode(model, x, tiling)
    torch.testing.assert_close(z, z_whole, atol=1e-4, rtol=0)
    torch.testing.assert_close(s, s_whole, atol=1e-4, rtol=0)
    y = tiled_decode(model, z_whole, tiling)
    assert (y - y_whole).abs().max() < 1e-3
    assert (tiled_reconstruct(model, x, tiling) - y_whole).abs().max() < 1e-3


def test_each_tile_runs_alone_through_the_network(monkeypatch):
    """No layer ever sees more than one tile: the work per step is bounded by the tile, not by the image."""
    model = _model(2, attention=True)
    seen = []
    conv_in = model.encoder.blocks[0]
    conv_in.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[2:])))
    attn_sizes = []
    for block in model.encoder.blocks:
        if type(block).__name__ == "SpatialAttentionBlock":
            block.attn.register_forward_hook(lambda m, inp, out: attn_sizes.append(inp[0].shape[1]))
    tiled_encode(model, _smooth((128, 96)), Tiling.of(32, 0.25, 2, align=2))
    assert seen and all(s[0] <= 32 and s[1] <= 32 for s in seen)
    assert len(seen) == len(tile_grid((128, 96), Tiling.of(32, 0.25, 2, align=2), 2)[0].starts) * 4  # 96 -> 4 tiles
    assert attn_sizes and max(attn_sizes) <= 16 * 16  # tokens per attention call: one latent tile


@pytest.mark.parametrize("norm", ["image", "tile"])
def test_seams_stay_invisible_with_attention(norm):
    model = _model(2, attention=True)
    x = _smooth((256, 192), seed=3)
    tiling = Tiling.of(64, 0.5, 2, align=2, norm=norm)
    y = tiled_reconstruct(model, x, tiling)[0]
    borders = output_borders((256, 192), tiling, 2)
    assert len(borders[0]) >= 3 and len(borders[1]) >= 2
    assert seam_ratio(y, borders) <= 1.10


def test_seam_ratio_sees_a_seam():
    x = _smooth((128, 128))[0]
    borders = [[32, 64, 96], []]
    assert seam_ratio(x, borders) == pytest.approx(1.0, abs=0.25)
    seamed = x.clone()
    seamed[:, 32:64, :] += 0.05  # one tile brighter than its neighbours
    assert seam_ratio(seamed, borders) > 1.5


def test_seam_ratio_against_the_input_counts_only_what_tiling_added():
    x = _smooth((128, 128))[0]
    borders = [[32, 64, 96], []]
    banded = x.clone()
    banded[:, 64:, :] += 0.2  # the input's own edge on a border line (a scanner band)
    assert seam_ratio(banded, borders) > 1.5  # alone, the edge reads as a seam
    assert seam_ratio(banded, borders, banded) == pytest.approx(1.0)
    blurred = banded.clone()
    blurred[:, 1:-1, :] = (banded[:, :-2, :] + banded[:, 1:-1, :] + banded[:, 2:, :]) / 3  # the edge, softened
    assert seam_ratio(blurred, borders, banded) < 1.0
    seamed = banded.clone()
    seamed[:, 96:, :] += 0.2  # the last tile brighter: a step the input does not have
    assert seam_ratio(seamed, borders, banded) > 1.3
    assert math.isnan(seam_ratio(x, [[], []], x))
    with pytest.raises(ValueError, match="reference shape"):
        seam_ratio(x, borders, x[:, :64])


def _checkpoint(path: Path, *overrides: str) -> Path:
    cfg = load_config(ROOT / "vae_config.json", [*TINY, *overrides])
    torch.manual_seed(0)
    model = build_autoencoder(cfg.autoencoder_def)
    return save_checkpoint({"autoencoder": model.state_dict(), "config": to_dict(cfg), "epoch": 1}, path)


@pytest.mark.parametrize("dims, shape", [(2, (70, 90)), (3, (36, 20, 40))])
def test_decode_of_encode_is_reconstruct(tmp_path, dims, shape):
    extra = [] if dims == 2 else ["spatial_dims=3", "autoencoder_def.spatial_dims=3", "autoencoder_train.patch_size=[16,16,16]"]
    ckpt = _checkpoint(tmp_path / "ae.pt", *extra)
    image = write_image((_smooth(shape)[0] * 1000).numpy(), tmp_path / "in" / "case.nii.gz", spacing=(0.3,) * dims)
    common = ["--checkpoint", str(ckpt), "--tile-size", "32" if dims == 2 else "16"]
    assert main(["encode", *common, "--input", str(image), "--output", str(tmp_path / "lat")]) == 0
    assert main(["reconstruct", *common, "--input", str(image), "--output", str(tmp_path / "rec"), "--report"]) == 0
    assert main(["decode", *common, "--input", str(tmp_path / "lat"), "--output", str(tmp_path / "dec")]) == 0
    rec, rec_spacing = read_image(tmp_path / "rec" / "case.nii.gz")
    dec, dec_spacing = read_image(tmp_path / "dec" / "case.nii.gz")
    assert rec.shape == dec.shape == (1, *shape)
    assert np.abs(rec - dec).max() <= 1e-4
    assert dec_spacing == pytest.approx(rec_spacing, abs=1e-6)
    assert dec_spacing == pytest.approx((0.3,) * dims, abs=1e-6)
    report = json.loads((tmp_path / "rec" / "reconstruct_report.json").read_text())
    assert report["tile_size"] == [32] * 2 if dims == 2 else [16] * 3
    assert np.isfinite(report["images"]["case"]["seam_ratio"])


def test_out_of_memory_names_the_setting_to_lower(tmp_path, monkeypatch, capsys):
    import medgen.inference.autoencoder as inference

    ckpt = _checkpoint(tmp_path / "ae.pt")
    image = write_image((_smooth((64, 64))[0] * 1000).numpy(), tmp_path / "pano.nii.gz")

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 279257288704 bytes")

    monkeypatch.setattr(inference, "tiled_encode", no_memory)
    assert main(["encode", "--checkpoint", str(ckpt), "--input", str(image), "--output", str(tmp_path / "o"),
                 "--tile-size", "64"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medgen")]
    assert len(lines) == 1 and "lower --tile-size" in lines[0] and "pano" in lines[0] and "64x64" in lines[0]


def test_a_real_full_size_radiograph_reconstructs_at_its_size_without_seams(tmp_path):
    """pydicom-data's RG1_UNCI.dcm (CR, 1955 x 1841, MONOCHROME1) through `medgen reconstruct --report` with a
    model that has non-local attention in both bottlenecks."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCI.dcm")
    if path is None:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    ckpt = _checkpoint(tmp_path / "ae.pt", "autoencoder_def.channels=[8,16,16]", "autoencoder_def.attention_levels=[false,false,true]")
    assert main(["reconstruct", "--checkpoint", str(ckpt), "--input", str(path), "--output", str(tmp_path / "rec"),
                 "--tile-size", "256", "--report"]) == 0
    out, _ = read_image(tmp_path / "rec" / "RG1_UNCI.nii.gz")
    assert out.shape == (1, 1955, 1841)
    report = json.loads((tmp_path / "rec" / "reconstruct_report.json").read_text())
    assert report["images"]["RG1_UNCI"]["model_shape"] == [1956, 1844]  # padded to the downsampling factor 4
    assert report["seam_ratio_max"] <= 1.10


def test_tile_statistics_give_each_tile_its_own_forward_pass():
    """norm="tile": every tile is the model's plain forward pass on that tile (sliding-window inference), run
    one tile after another."""
    model = _model(2, attention=True)
    x = _smooth((64, 96))
    z, _ = tiled_encode(model, x, Tiling.of(32, 0, 2, align=2, norm="tile"))
    with torch.no_grad():
        for r in range(0, 64, 32):
            for c in range(0, 96, 32):
                expected, _ = model.encode(x[..., r:r + 32, c:c + 32])
                torch.testing.assert_close(z[..., r // 2:r // 2 + 16, c // 2:c // 2 + 16], expected, atol=1e-5, rtol=0)


def test_tile_memory_follows_the_tile_and_the_network():
    from medgen.models.tiled import ACTIVATIONS_IN_FLIGHT, tile_memory

    model = _model(2, attention=True)
    # the largest activation of this network is its first level's: 8 channels (16 at the decoder's upsampling
    # to full resolution) over the whole tile, float32
    assert tile_memory(model, (64, 64)) == ACTIVATIONS_IN_FLIGHT * 16 * 64 * 64 * 4
    assert tile_memory(model, (128, 64)) == 2 * tile_memory(model, (64, 64))
    assert tile_memory(_model(3, attention=False), (32, 32, 32)) == ACTIVATIONS_IN_FLIGHT * 16 * 32**3 * 4
    assert all(p.device.type == "cpu" for p in model.parameters())  # the meta run leaves the model where it was


def test_default_tiles_shrink_to_fit_the_device_memory(tmp_path, monkeypatch, caplog):
    import medgen.models.tiled as tiled
    from medgen.models.autoencoder import load_model

    ckpt = _checkpoint(tmp_path / "ae.pt", "autoencoder_train.patch_size=[128,96]")
    model, cfg = load_model(ckpt)
    patch = tiled.tile_memory(model, (128, 96))
    assert tiled.tiling_for(cfg, model=model).tile == (128, 96)  # this machine has room for the patch
    assert tiled.fit_tile(model, (128, 96), budget=patch) == (128, 96)
    assert tiled.fit_tile(model, (128, 96), budget=patch - 1) == (64, 96)  # the longest axis halves first
    assert tiled.fit_tile(model, (128, 96), budget=patch // 4) == (64, 48)
    assert tiled.fit_tile(model, (128, 96), budget=1) == (8, 8)  # never below MIN_TILE x the factor 2

    monkeypatch.setattr(tiled, "free_memory", lambda device: patch)  # half of it may be used: half the patch fits
    with caplog.at_level("WARNING", logger="medgen.models.tiled"):
        tiling = tiled.tiling_for(cfg, model=model)
    assert tiling.tile == (64, 96) and tiling.overlap == (16, 24)
    assert "64x96" in caplog.text and "128x96" in caplog.text and "--tile-size" in caplog.text
    assert tiled.tiling_for(cfg, tile_size=128, model=model).tile == (128, 128)  # a tile the user sets is kept
    assert tiled.tiling_for(cfg).tile == (128, 96)  # without the model: the training patch


def _stepped(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The tiled path's step-by-step forward of ``block`` (``_block``) on one tile covering all of ``x``, each
    GroupNorm handed that tile's own statistics."""
    from medgen.models.tiled import _block, _tile_stats

    steps = _block(block, [x], x.device)
    try:
        request = next(steps)
        while True:
            request = steps.send(_tile_stats(request))
    except StopIteration as done:
        return done.value


@pytest.mark.parametrize("dims", [2, 3])
def test_stepped_blocks_equal_monai_forward(dims):
    """The tiled path re-implements the forward of MONAI's AEKLResBlock and SpatialAttentionBlock between
    GroupNorms: on one whole tile it must give MONAI's own output, so a MONAI release that changes those blocks
    fails here instead of changing tiled outputs unnoticed."""
    from monai.networks.blocks.spatialattention import SpatialAttentionBlock
    from monai.networks.nets.autoencoderkl import AEKLResBlock

    model = _model(dims, attention=True)
    torch.manual_seed(1)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)):  # make the affine part count
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
    blocks = list(model.encoder.blocks) + list(model.decoder.blocks)
    cases = {
        "res block": next(b for b in blocks if isinstance(b, AEKLResBlock) and b.in_channels == b.out_channels),
        "res block, channel change": next(b for b in blocks if isinstance(b, AEKLResBlock) and b.in_channels != b.out_channels),
        "attention": next(b for b in blocks if isinstance(b, SpatialAttentionBlock)),
    }
    for name, block in cases.items():
        channels = block.in_channels if isinstance(block, AEKLResBlock) else block.norm.num_channels
        x = 0.3 + 2.0 * torch.randn(2, channels, *(6, 10, 4)[:dims])  # two samples: statistics are per sample
        with torch.no_grad():
            expected = block(x)
            got = _stepped(block, x)
        assert got.shape == expected.shape, name
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
