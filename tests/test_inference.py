"""`medgen reconstruct` and `medgen encode`: tiles, shapes and spacing kept, latents that decode to
the reconstruction, the latent scale factor, inputs from folders and configs, nothing identifying written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from conftest import TINY
from medgen.cli import main
from medgen.config import load_config, to_dict
from medgen.io import find_images, read_image, write_image
from medgen.io.discovery import discover_items
from medgen.inference.autoencoder import decode_latents
from medgen.models.autoencoder import build_autoencoder, load_model
from medgen.io.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _checkpoint(path: Path, *overrides: str) -> Path:
    """A checkpoint in the VAE trainer's format (weights under "autoencoder", the config under "config").

    Untrained weights: these tests are about the inference mechanics; tests/test_bundles.py runs inference
    on checkpoints that a real training run wrote.
    """
    cfg = load_config(ROOT / "vae_config.json", [*TINY, *overrides])
    torch.manual_seed(0)
    model = build_autoencoder(cfg.autoencoder_def)
    return save_checkpoint({"autoencoder": model.state_dict(), "config": to_dict(cfg), "epoch": 1}, path)


@pytest.fixture(scope="module")
def ckpt2d(tmp_path_factory) -> Path:  # patch 32x32, downsampling 2
    return _checkpoint(tmp_path_factory.mktemp("ck2d") / "last.pt")


@pytest.fixture(scope="module")
def ckpt3d(tmp_path_factory) -> Path:  # patch 16^3
    return _checkpoint(tmp_path_factory.mktemp("ck3d") / "last.pt", "spatial_dims=3", "autoencoder_def.spatial_dims=3",
                       "autoencoder_train.patch_size=[16,16,16]")


def _smooth(shape, seed=0) -> np.ndarray:
    """A smooth random image (1, *shape) in about [0, 1000]: something an autoencoder input looks like."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    img = sum(np.sin((2 + i) * np.pi * g + rng.uniform(0, 6)) for i, g in enumerate(grids))
    return (500 + 300 * img + 20 * rng.normal(size=shape)).astype(np.float32)[None]


def _nii(path: Path):
    array, spacing = read_image(path)
    return torch.as_tensor(array), spacing


def test_reconstruct_3d_volume_larger_than_a_tile_runs_in_tiles_and_keeps_shape_and_spacing(ckpt3d, tmp_path, monkeypatch):
    vol = write_image(_smooth((20, 24, 34)), tmp_path / "in" / "cbct.nii.gz", spacing=(0.5, 0.4, 0.3))
    model, _ = load_model(ckpt3d, device="cpu")
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[2:])))
    import medgen.inference.autoencoder as inference

    original = inference.load_model
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: (model, original(*a, **k)[1]))
    assert main(["reconstruct", "--checkpoint", str(ckpt3d), "--input", str(vol), "--output", str(tmp_path / "out")]) == 0
    # only tiles of the training patch (16^3) reached the encoder, never the whole volume
    assert seen and all(max(s) <= 16 for s in seen)
    assert len(seen) == 2 * 2 * 3  # tiles of 16 every 12 (25 % overlap): 20 -> 2, 24 -> 2, 34 -> 3
    out, spacing = _nii(tmp_path / "out" / "cbct.nii.gz")
    assert out.shape == (1, 20, 24, 34)
    assert spacing == pytest.approx((0.5, 0.4, 0.3))
    assert out.isfinite().all() and 0 <= out.min() and out.max() <= 1 and out.std() > 0


@pytest.mark.parametrize("dims", [2, 3])
def test_encode_latents_decode_to_the_reconstruction(ckpt2d, ckpt3d, tmp_path, dims):
    ckpt, shape = (ckpt2d, (32, 32)) if dims == 2 else (ckpt3d, (16, 16, 16))
    image = write_image(_smooth(shape, seed=dims), tmp_path / "in" / "case.nii.gz")
    assert main(["encode", "--checkpoint", str(ckpt), "--input", str(image), "--output", str(tmp_path / "lat")]) == 0
    assert main(["reconstruct", "--checkpoint", str(ckpt), "--input", str(image), "--output", str(tmp_path / "rec")]) == 0
    record = torch.load(tmp_path / "lat" / "case.pt", weights_only=True)
    model, cfg = load_model(ckpt, device="cpu")
    assert record["z_mu"].shape == (cfg.autoencoder_def.latent_channels, *[s // 2 for s in shape])
    assert record["image_shape"] == list(shape) and "z" not in record
    recon, _ = _nii(tmp_path / "rec" / "case.nii.gz")
    with torch.no_grad():  # one tile covers the image: the plain forward pass
        decoded = model.decode(record["z_mu"][None])[0].clamp(0, 1)
    torch.testing.assert_close(decoded, recon, atol=1e-5, rtol=0)
    torch.testing.assert_close(decode_latents(model, record), recon, atol=1e-5, rtol=0)


def test_encode_pads_odd_sizes_and_writes_the_scale_factor_of_the_set(ckpt2d, tmp_path):
    src = tmp_path / "in"
    write_image(_smooth((41, 37), seed=1), src / "a.nii.gz")
    write_image(_smooth((32, 48), seed=2), src / "sub" / "b.nii.gz")
    assert main(["encode", "--checkpoint", str(ckpt2d), "--input", str(src), "--output", str(tmp_path / "lat"), "--sample"]) == 0
    a = torch.load(tmp_path / "lat" / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "lat" / "sub" / "b.pt", weights_only=True)
    # 41 x 37 is padded to 42 x 38 (multiples of the downsampling 2) and encoded whole
    assert a["z_mu"].shape[1:] == (21, 19) and a["model_shape"] == [42, 38] and a["image_shape"] == [41, 37]
    assert b["z_mu"].shape[1:] == (16, 24)
    assert a["z"].shape == a["z_mu"].shape and not torch.equal(a["z"], a["z_mu"])
    model, _ = load_model(ckpt2d, device="cpu")
    assert decode_latents(model, a, "z").shape == (1, 41, 37)

    stats = json.loads((tmp_path / "lat" / "scale_factor.json").read_text())
    z = torch.cat([a["z"].flatten(), b["z"].flatten()]).double()
    assert stats["latent"] == "z" and stats["num_images"] == 2 and stats["num_values"] == z.numel()
    assert stats["scale_factor"] == pytest.approx(1 / z.std().item(), rel=1e-9)

    # npz: the same values, loadable without pickle
    assert main(["encode", "--checkpoint", str(ckpt2d), "--input", str(src), "--output", str(tmp_path / "npz"),
                 "--latent-format", "npz"]) == 0
    with np.load(tmp_path / "npz" / "a.npz", allow_pickle=False) as f:
        np.testing.assert_allclose(f["z_mu"], a["z_mu"].numpy(), atol=1e-6)
        assert f["image_shape"].tolist() == [41, 37]


def test_resize_mode_checkpoint_brings_outputs_back_to_the_input_shape(tmp_path):
    ckpt = _checkpoint(tmp_path / "resize.pt", "patch_mode=resize")
    image = write_image(_smooth((40, 48)), tmp_path / "in" / "pano.nii.gz", spacing=(0.2, 0.1))
    assert main(["reconstruct", "--checkpoint", str(ckpt), "--input", str(image), "--output", str(tmp_path / "rec")]) == 0
    out, spacing = _nii(tmp_path / "rec" / "pano.nii.gz")
    assert out.shape == (1, 40, 48) and spacing == pytest.approx((0.2, 0.1))
    assert main(["encode", "--checkpoint", str(ckpt), "--input", str(image), "--output", str(tmp_path / "lat")]) == 0
    record = torch.load(tmp_path / "lat" / "pano.pt", weights_only=True)
    assert record["model_shape"] == [32, 32] and record["z_mu"].shape[1:] == (16, 16)
    model, _ = load_model(ckpt, device="cpu")
    assert decode_latents(model, record).shape == (1, 40, 48)


def test_folder_and_config_inputs_mirror_relative_paths(ckpt2d, demo2d, tmp_path):
    assert main(["reconstruct", "--checkpoint", str(ckpt2d), "--input", str(demo2d), "--output", str(tmp_path / "all"),
                 "--format", "png"]) == 0
    expected = {p.relative_to(demo2d).with_suffix(".png").as_posix() for p in find_images(demo2d)}
    assert {p.relative_to(tmp_path / "all").as_posix() for p in (tmp_path / "all").rglob("*.png")} == expected
    arr, _ = read_image(tmp_path / "all" / min(expected))
    assert arr.shape == (1, 40, 40)  # demo images are 40x40, larger than the 32x32 patch

    config = tmp_path / "train.json"
    config.write_text(json.dumps({"data_base_dir": str(demo2d), "data_source": "both", "train_split": 0.6, "seed": 3}))
    assert main(["reconstruct", "--checkpoint", str(ckpt2d), "--input", str(config), "--output", str(tmp_path / "val")]) == 0
    _, val = discover_items(load_config(config))
    written = {p.relative_to(tmp_path / "val").as_posix() for p in (tmp_path / "val").rglob("*.nii.gz")}
    assert written == {Path(it["image"]).relative_to(demo2d).with_suffix(".nii.gz").as_posix() for it in val}
    assert 0 < len(written) < len(expected)


def test_dicom_output_carries_no_patient_data_and_is_named_after_the_file(ckpt2d, tmp_path):
    src = write_image(_smooth((32, 32)).astype(np.uint16), tmp_path / "in" / "scan01.dcm", spacing=(0.1, 0.1))
    ds = pydicom.dcmread(src)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-4711-XYZ", "19700101"
    ds.AccessionNumber, ds.InstitutionName = "ACC-99-QRS", "Hospital-Secret-Name"
    ds.save_as(src)
    assert main(["reconstruct", "--checkpoint", str(ckpt2d), "--input", str(src), "--output", str(tmp_path / "out"),
                 "--format", "dcm"]) == 0
    out = tmp_path / "out" / "scan01.dcm"
    raw = out.read_bytes()
    for secret in (b"Doe^Jane", b"PID-4711-XYZ", b"19700101", b"ACC-99-QRS", b"Hospital-Secret-Name", ds.SOPInstanceUID.encode()):
        assert secret not in raw
    written = pydicom.dcmread(out)
    assert written.PatientName == "" and written.PixelSpacing == [0.1, 0.1]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["scan01.dcm"]


def test_errors_say_what_to_do(ckpt2d, ckpt3d, tmp_path, capsys):
    vol = write_image(_smooth((16, 16, 16)), tmp_path / "v.nii.gz")
    assert main(["reconstruct", "--checkpoint", str(ckpt3d), "--input", str(vol), "--output", str(tmp_path / "o"),
                 "--format", "png"]) == 2
    assert "--format nii or dcm" in capsys.readouterr().err
    assert main(["reconstruct", "--checkpoint", str(ckpt2d), "--input", str(vol), "--output", str(tmp_path / "o")]) == 2
    assert "3D image but the checkpoint's model is 2D" in capsys.readouterr().err
    plain = tmp_path / "plain.pt"
    torch.save(torch.load(ckpt2d, weights_only=True)["autoencoder"], plain)
    assert main(["encode", "--checkpoint", str(plain), "--input", str(vol), "--output", str(tmp_path / "o")]) == 2
    assert "pass --config" in capsys.readouterr().err
    assert main(["encode", "--checkpoint", str(ckpt2d), "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
