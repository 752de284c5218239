"""Whole-image reconstruction quality on constructed pairs with known answers: PSNR, SSIM, the high-frequency
power ratio (blur < 1 < noise) and the standard-deviation ratio."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.layers import GaussianFilter

from medgen.metrics import high_frequency_ratio, radial_power_spectrum, whole_image_quality


def _texture(*spatial: int, seed: int = 0) -> torch.Tensor:
    """A (1, *spatial) image in about [0.05, 0.95]: a smooth ramp plus white-noise texture (power at every frequency)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.3, 0.7, spatial[0]).reshape(-1, *[1] * (len(spatial) - 1)).expand(*spatial)
    return (ramp + 0.08 * torch.randn(*spatial, generator=g))[None].clamp(0, 1)


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    return GaussianFilter(image.dim() - 1, sigma=sigma)(image[None])[0]


@pytest.mark.parametrize("spatial", [(64, 64), (16, 16, 16)])
def test_identical_images_score_perfectly(spatial):
    x = _texture(*spatial)
    q = whole_image_quality(x, x.clone())
    assert q["psnr"] == math.inf  # as psnr() reports for identical images
    assert q["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert q["hf_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert q["std_ratio"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("spatial", [(64, 64), (16, 16, 16)])
def test_blur_lowers_the_high_frequency_ratio_more_for_stronger_blur(spatial):
    x = _texture(*spatial)
    mild, strong = whole_image_quality(_blur(x, 0.7), x), whole_image_quality(_blur(x, 1.5), x)
    assert 0.0 < strong["hf_ratio"] < mild["hf_ratio"] < 0.5
    assert strong["hf_ratio"] < 0.01  # a Gaussian of sigma 1.5 keeps exp(-4 pi^2 1.5^2 0.25^2) < 0.4% at f = 0.25
    assert mild["std_ratio"] < 0.9 and strong["std_ratio"] < 0.9  # blur flattens the texture's contrast
    assert strong["psnr"] < mild["psnr"] and strong["ssim"] < mild["ssim"] < 1.0


def test_added_white_noise_raises_the_high_frequency_ratio():
    g = torch.Generator().manual_seed(1)
    smooth = _blur(_texture(64, 64), 2.0)
    noisy = smooth + 0.05 * torch.randn(smooth.shape, generator=g)
    assert high_frequency_ratio(noisy[None], smooth[None]) > 10.0  # the smooth image has almost no power up there
    # white noise on white noise of the same variance doubles the power at every frequency
    white = 0.1 * torch.randn(1, 1, 64, 64, generator=g)
    same = 0.1 * torch.randn(1, 1, 64, 64, generator=g)
    assert high_frequency_ratio(white + same, white) == pytest.approx(2.0, rel=0.1)


def test_constant_offset_and_contrast_have_known_values():
    x = _texture(64, 64) * 0.8
    q = whole_image_quality(x + 0.1, x)
    assert q["psnr"] == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 at data range 1: 10 log10(1 / 0.01)
    assert q["ssim"] < 1.0
    assert q["hf_ratio"] == pytest.approx(1.0, abs=1e-6)  # the mean is not detail (float32 rounding aside)
    assert q["std_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert whole_image_quality(x + 0.1, x, data_range=2.0)["psnr"] == pytest.approx(20.0 + 20 * math.log10(2), abs=1e-4)
    stretched = x.mean() + 2.0 * (x - x.mean())  # twice the contrast: four times the power
    q = whole_image_quality(stretched, x)
    assert q["hf_ratio"] == pytest.approx(4.0, rel=1e-6)
    assert q["std_ratio"] == pytest.approx(2.0, rel=1e-6)


def test_the_band_selects_frequency_shells():
    x = _texture(64, 64)[None]
    blurred = _blur(x[0], 1.0)[None]
    # blur removes more of the top octave than of the octave below it
    assert high_frequency_ratio(blurred, x, band=(0.25, 0.5)) < high_frequency_ratio(blurred, x, band=(0.125, 0.25)) < 1.0
    with pytest.raises(ValueError, match="0 <= low < high <= 0.5"):
        high_frequency_ratio(x, x, band=(0.3, 0.7))
    with pytest.raises(ValueError, match="raise bins"):
        high_frequency_ratio(x, x, band=(0.26, 0.27), bins=8)
    with pytest.raises(ValueError, match="differ in shape"):
        whole_image_quality(x[0], x[0, :, :32])


def test_radial_power_spectrum_of_3d_white_noise_is_flat():
    noise = torch.randn(4, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.1
    spectrum = radial_power_spectrum(noise, bins=4)
    assert spectrum.shape == (4,) and spectrum[1:].min() > 0.008 and spectrum[1:].max() < 0.012
