"""medgen fit-decoder: denoising and inpainting one image with a ProgressiveDecoder."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from medgen.training import fit_decoder as fd


pytestmark = pytest.mark.usefixtures("one_thread")


def phantom(h: int = 32, w: int = 32) -> np.ndarray:
    """Smooth background, an elliptic 'jaw' and a small bright 'tooth', in raw detector-like units."""
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    img = 0.3 + 0.4 * ((x**2 / 0.6 + y**2 / 0.3) < 0.5) + 0.2 * (((x - 0.3) ** 2 + (y + 0.2) ** 2) < 0.05) + 0.1 * x
    return (1000 * img).astype(np.float32)


def noisy_phantom(h: int = 32, w: int = 32, sigma: float = 100.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    clean = phantom(h, w)
    return clean, clean + sigma * np.random.default_rng(seed).standard_normal(clean.shape).astype(np.float32)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def test_noise_estimate_recovers_known_sigma():
    clean, noisy = noisy_phantom(64, 64, sigma=50.0)
    assert fd.estimate_noise_std(noisy) == pytest.approx(50.0, rel=0.2)
    assert fd.estimate_noise_std(clean) < 5.0


@pytest.mark.parametrize("shape", [(48, 48), (40, 56)])
def test_denoising_gets_closer_to_the_clean_image(shape):
    clean, noisy = noisy_phantom(*shape)
    result = fd.fit_decoder(noisy[None], steps=300, seed=0, progress=False)
    assert result.reconstruction.shape == (1, *shape) and result.reconstruction.dtype == np.float32
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert mse(result.reconstruction[0], clean) < 0.75 * mse(noisy, clean)
    if shape == (48, 48):
        # the fit stopped at the estimated noise level (before reproducing the noise), with the best output
        assert result.stop_reason == "noise_level"
        assert result.losses[-1] <= result.noise_std**2 and result.best_step == len(result.losses) - 1


def test_inpainting_fills_the_masked_region_from_its_surroundings():
    clean = phantom(48, 48)
    mask = np.zeros_like(clean)
    mask[20:28, 18:26] = 1  # e.g. a metal artefact
    corrupted = np.where(mask > 0, 4000.0, clean).astype(np.float32)
    result = fd.fit_decoder(corrupted[None], mask[None], steps=300, noise_std=0, keep_observed=True, progress=False)
    inside = mask > 0
    recon = result.reconstruction[0]
    assert np.array_equal(recon[~inside], corrupted[~inside])  # keep_observed leaves known pixels alone
    fill_with_mean = mse(np.full(inside.sum(), clean[~inside].mean()), clean[inside])
    # typically < 0.02 of a flat fill; 0.5 leaves room for the run-to-run spread of the optimisation
    assert mse(recon[inside], clean[inside]) < 0.5 * fill_with_mean
    assert recon[inside].max() < 1500  # the artefact value (4000) is not reproduced
    unmasked = fd.fit_decoder(corrupted[None], steps=100, noise_std=0, progress=False)
    assert unmasked.reconstruction[0][inside].mean() > 1500  # without the mask the artefact is fitted


def test_patience_stops_a_stalled_fit():
    result = fd.fit_decoder(
        np.full((1, 16, 16), 7.0, np.float32), steps=200, patience=5, lr=0.0, noise_std=0, progress=False
    )
    assert result.stop_reason == "patience" and len(result.losses) == 6


def test_volume_input_is_supported():
    vol = np.random.default_rng(0).random((1, 6, 8, 8)).astype(np.float32)
    result = fd.fit_decoder(vol, steps=3, latent_channels=8, progress=False)
    assert result.reconstruction.shape == (1, 6, 8, 8)


@pytest.mark.parametrize(
    "image, mask, message",
    [
        (np.zeros((1, 8, 8)), np.zeros((1, 8, 9)), "does not match"),
        (np.zeros((1, 8, 8)), np.ones((1, 8, 8)), "covers the whole image"),
        (np.full((1, 8, 8), np.nan), None, "NaN"),
        (np.zeros(8), None, "expected"),
    ],
)
def test_bad_inputs_are_reported(image, mask, message):
    with pytest.raises(ValueError, match=message):
        fd.fit_decoder(image, mask, steps=1, progress=False)


def _cli(argv: list[str]) -> int:
    from medgen.cli import main

    return main(["fit-decoder", *argv])


def _read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im, dtype=np.float64)


def test_cli_denoises_a_png_and_writes_the_reconstruction(tmp_path):
    clean, noisy = noisy_phantom(48, 48)
    noisy = np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)
    src, out = tmp_path / "noisy.png", tmp_path / "out" / "denoised.png"
    Image.fromarray(noisy).save(src)
    assert _cli(["--input", str(src), "--output", str(out), "--steps", "300", "--seed", "0", "--no-progress"]) == 0
    with Image.open(out) as im:
        assert im.mode == "I;16"  # written like the 16-bit input, in the same units
        written = np.asarray(im, dtype=np.float64)
    assert written.shape == clean.shape
    assert mse(written, clean) < 0.75 * mse(noisy, clean)


def test_cli_inpaints_with_a_mask(tmp_path):
    clean = phantom(48, 48)
    mask = np.zeros(clean.shape, np.uint8)
    mask[20:28, 18:26] = 255
    corrupted = np.where(mask > 0, 4000, np.rint(clean))
    src, msk, out = tmp_path / "img.png", tmp_path / "mask.png", tmp_path / "inpainted.png"
    Image.fromarray(corrupted.astype(np.uint16)).save(src)
    Image.fromarray(mask).save(msk)
    rc = _cli(
        [
            "--input",
            str(src),
            "--mask",
            str(msk),
            "--output",
            str(out),
            "--steps",
            "300",
            "--noise-std",
            "0",
            "--no-progress",
            "--keep-observed",
        ]
    )
    assert rc == 0
    written = _read_png(out)
    inside = mask > 0
    assert np.array_equal(written[~inside], corrupted[~inside])  # --keep-observed
    assert written[inside].max() < 1500  # the 4000 artefact is replaced by anatomy-like values


def test_cli_reports_missing_input(tmp_path, capsys):
    assert _cli(["--input", str(tmp_path / "nope.png"), "--output", str(tmp_path / "o.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_command_is_registered_in_cli():
    from medgen.cli import build_parser

    assert "fit-decoder" in build_parser()._subparsers._group_actions[0].choices


def test_cli_dicom_in_dicom_out_keeps_geometry_not_identity(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    from medgen.io import read_image

    src = get_testdata_file("CT_small.dcm")  # 128x128 CT with patient attributes and PixelSpacing
    out = tmp_path / "fitted.dcm"
    assert _cli(["--input", src, "--output", str(out), "--steps", "3", "--no-progress"]) == 0
    image, spacing = read_image(src)
    fitted, fitted_spacing = read_image(out)
    assert fitted.shape == image.shape
    assert fitted_spacing == pytest.approx(spacing)
    ds = pydicom.dcmread(out)
    original = pydicom.dcmread(src)
    assert str(ds.PatientName) == "" and ds.PatientID == ""
    assert ds.SOPInstanceUID != original.SOPInstanceUID and ds.StudyInstanceUID != original.StudyInstanceUID
