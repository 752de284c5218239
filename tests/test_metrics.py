"""Image-quality and sample-quality metrics: PSNR/SSIM, FID/KID, FeatureExtractor, weight-free measures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from medgen.metrics import (
    FeatureExtractor,
    fid,
    histogram_intersection,
    histogram_wasserstein,
    kid,
    psnr,
    radial_power_spectrum,
    spectrum_distance,
    ssim,
    ssim_diversity,
)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 1, 16, 16, 16)])
def test_psnr_and_ssim_2d_and_3d(shape):
    torch.manual_seed(0)
    x = torch.rand(shape)
    # MSE 0.01 with data range 1 -> 20 dB
    assert psnr(torch.zeros(shape), torch.full(shape, 0.1)).item() == pytest.approx(20.0, abs=1e-4)
    assert psnr(x, x + 0.1, data_range=2.0).item() == pytest.approx(20.0 + 20 * math.log10(2.0), abs=1e-4)
    assert psnr(x, x + 0.1, reduction="none").shape == (2,)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    noisy = (x + 0.3 * torch.randn(shape)).clamp(0, 1)
    per_image = ssim(x, noisy, reduction="none")
    assert per_image.shape == (2,) and (per_image < 0.9).all()


def test_paired_metrics_validate_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 16))
    with pytest.raises(ValueError, match="smaller than win_size"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="2D .* or 3D"):
        ssim(torch.rand(4, 32, 32), torch.rand(4, 32, 32))


# --------------------------------------------------------------------------------------------------- FID / KID
def test_fid_identical_and_shifted():
    torch.manual_seed(0)
    feats = torch.randn(64, 4)
    assert abs(fid(feats, feats.clone()).item()) < 1e-6
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0])
    # same covariance, shifted mean: the Frechet distance is exactly ||shift||^2
    assert fid(feats, feats + shift).item() == pytest.approx(float(shift @ shift), rel=1e-4)
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid(feats, torch.randn(64, 5))


def _kid_by_hand(x: list[list[float]], y: list[list[float]]) -> float:
    d, m = len(x[0]), len(x)

    def k(a, b):
        return (sum(ai * bi for ai, bi in zip(a, b, strict=True)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_hand_computation():
    x = [[0.0, 1.0], [1.0, 0.5], [-1.0, 2.0]]
    y = [[2.0, 0.0], [0.5, -1.0], [1.0, 1.0]]
    # one subset holding every vector: the unbiased MMD^2 does not depend on the order drawn
    mean, std = kid(torch.tensor(x), torch.tensor(y), num_subsets=1, subset_size=10)
    assert mean.item() == pytest.approx(_kid_by_hand(x, y), rel=1e-9)
    assert std.item() == 0.0


def test_kid_subsets_and_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(60, 8, generator=g), torch.randn(60, 8, generator=g)
    same, _ = kid(a, b, num_subsets=20, subset_size=30, generator=torch.Generator().manual_seed(1))
    shifted, std = kid(a, b + 1.0, num_subsets=20, subset_size=30, generator=torch.Generator().manual_seed(1))
    assert shifted.item() > 1.0 > abs(same.item())  # small subsets: the estimate is noisy near 0
    assert std.item() > 0.0


# ---------------------------------------------------------------------------------------------- FeatureExtractor
class TinyFeatureNet(nn.Module):
    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 6, 3, stride=2)
        self.act = nn.Tanh()  # no dead channels, so feature covariances stay non-singular

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))  # (B, 6, h, w) -> pooled to (B, 6) by the extractor


def test_feature_extractor_missing_path_names_it(tmp_path):
    missing = tmp_path / "weights" / "radimagenet.pt"
    with pytest.raises(FileNotFoundError, match="radimagenet.pt") as err:
        FeatureExtractor(missing)
    assert "never downloads" in str(err.value)


def test_feature_extractor_torchscript_fid_kid_match_direct(tmp_path):
    torch.manual_seed(0)
    net = TinyFeatureNet().eval()
    path = tmp_path / "features.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    extractor = FeatureExtractor(path)
    real, fake = torch.rand(20, 1, 32, 32), torch.rand(20, 1, 32, 32) ** 2
    f_real, f_fake = extractor.extract(real, batch_size=7), extractor.extract(fake, batch_size=7)
    with torch.no_grad():
        d_real, d_fake = net(real).mean((2, 3)), net(fake).mean((2, 3))
    torch.testing.assert_close(f_real, d_real)
    torch.testing.assert_close(fid(f_real, f_fake), fid(d_real, d_fake))
    assert fid(f_real, f_fake).item() > 0
    kid_a = kid(f_real, f_fake, num_subsets=5, subset_size=10, generator=torch.Generator().manual_seed(0))
    kid_b = kid(d_real, d_fake, num_subsets=5, subset_size=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(kid_a, kid_b)


def test_feature_extractor_preprocessing_for_rgb_networks(tmp_path):
    torch.manual_seed(0)
    net = TinyFeatureNet(in_channels=3).eval()
    path = tmp_path / "rgb.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    extractor = FeatureExtractor(path, in_channels=3, input_size=24, input_range=(-1.0, 1.0), mean=mean, std=std)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    expected_in = nn.functional.interpolate((x + 1) / 2, size=24, mode="bilinear", align_corners=False)
    expected_in = (expected_in.repeat(1, 3, 1, 1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        expected = net(expected_in).mean((2, 3))
    torch.testing.assert_close(extractor(x), expected)


def test_feature_extractor_state_dict_with_named_model(tmp_path):
    torch.manual_seed(0)
    trained = TinyFeatureNet().eval()
    path = tmp_path / "state.pt"
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, path)
    x = torch.rand(2, 1, 32, 32)
    extractor = FeatureExtractor(path, model=TinyFeatureNet)  # fresh random init, then the saved weights
    with torch.no_grad():
        torch.testing.assert_close(extractor(x), trained(x).mean((2, 3)))
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        FeatureExtractor(path)  # a state dict needs its model named
    extractor.train()
    assert not extractor.net.training  # features never depend on train mode


# --------------------------------------------------------------------------------------- weight-free measures
def test_ssim_diversity():
    torch.manual_seed(0)
    one = torch.rand(1, 1, 32, 32)
    assert ssim_diversity(one.repeat(5, 1, 1, 1)).item() == pytest.approx(0.0, abs=1e-5)  # mode collapse
    varied = torch.rand(5, 1, 32, 32)
    full = ssim_diversity(varied, batch_size=3)
    assert full.item() > 0.5
    # a subset of pairs estimates the same quantity; pairs are drawn reproducibly
    sub1 = ssim_diversity(varied, max_pairs=4, generator=torch.Generator().manual_seed(0))
    sub2 = ssim_diversity(varied, max_pairs=4, generator=torch.Generator().manual_seed(0))
    assert sub1.item() == sub2.item() and abs(sub1.item() - full.item()) < 0.2
    with pytest.raises(ValueError, match="at least 2 images"):
        ssim_diversity(one)


def test_histogram_distances():
    a = torch.full((4, 1, 16, 16), 0.2)
    b = torch.full((4, 1, 16, 16), 0.7)
    # all mass moved by 0.5: W1 = 0.5 up to one bin width
    assert histogram_wasserstein(a, b, bins=100).item() == pytest.approx(0.5, abs=0.011)
    assert histogram_wasserstein(a, a.clone()).item() == 0.0
    assert histogram_intersection(a, a.clone()).item() == pytest.approx(1.0)
    assert histogram_intersection(a, b).item() == 0.0
    torch.manual_seed(0)
    real, fake = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16) ** 3  # fake skewed dark
    assert histogram_wasserstein(real, fake).item() > 0.1
    assert 0.0 < histogram_intersection(real, fake).item() < 0.9
    # values outside the range land in the edge bins rather than vanishing
    assert histogram_intersection(torch.full((10,), 5.0), torch.ones(10)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="low < high"):
        histogram_wasserstein(a, b, value_range=(1.0, 0.0))


def test_radial_power_spectrum_is_flat_for_white_noise_and_blur_removes_high_frequencies():
    from monai.networks.layers import GaussianFilter

    torch.manual_seed(0)
    noise = torch.randn(64, 1, 32, 48) * 0.1  # white noise of variance 0.01: power 0.01 at every frequency
    spectrum = radial_power_spectrum(noise, bins=8)
    assert spectrum.shape == (8,) and spectrum[1:].min() > 0.008 and spectrum[1:].max() < 0.012
    blurred = GaussianFilter(2, sigma=1.5)(noise)
    low = radial_power_spectrum(blurred, bins=8)
    assert low[-1] < 0.01 * low[1]  # blur keeps the low and removes the high frequencies
    assert spectrum_distance(noise, noise.clone()).item() == 0.0
    assert spectrum_distance(noise, 2 * noise).item() == pytest.approx(math.log10(4), abs=1e-6)  # power x 4
    assert spectrum_distance(noise, blurred).item() > 1.0  # more than a decade apart on average
    with pytest.raises(ValueError, match=r"expected \(N, C, H, W\) or \(N, C, H, W, D\)"):
        radial_power_spectrum(torch.rand(1, 8, 8))
