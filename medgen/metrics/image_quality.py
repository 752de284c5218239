"""Image-quality measures for 2D (B, C, H, W) and 3D (B, C, H, W, D) batches.

Paired measures (``psnr``, ``ssim``) wrap ``monai.metrics.PSNRMetric`` / ``SSIMMetric``. The weight-free
sample-quality measures (``ssim_diversity``, ``histogram_wasserstein``, ``histogram_intersection``,
``spectrum_distance``) need no feature network, so a trainer or a benchmark can use them when no FID/KID
weights are configured.
"""

from __future__ import annotations

import torch
from monai.metrics import PSNRMetric, SSIMMetric

__all__ = [
    "psnr",
    "ssim",
    "ssim_diversity",
    "intensity_histogram",
    "histogram_wasserstein",
    "histogram_intersection",
    "radial_power_spectrum",
    "spectrum_distance",
]


def _spatial_dims(x: torch.Tensor, name: str) -> int:
    if x.dim() not in (4, 5):
        raise ValueError(f"{name}: expected a 2D (B, C, H, W) or 3D (B, C, H, W, D) batch, got shape {tuple(x.shape)}.")
    return x.dim() - 2


def _check_pair(x: torch.Tensor, y: torch.Tensor, name: str) -> int:
    if x.shape != y.shape:
        raise ValueError(f"{name}: the two batches differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}.")
    return _spatial_dims(x, name)


def _reduce(values: torch.Tensor, reduction: str, name: str) -> torch.Tensor:
    values = values.reshape(-1)
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"{name}: reduction must be 'mean' or 'none', got {reduction!r}.")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB (``monai.metrics.PSNRMetric``), per image then reduced.

    Args:
        x: (B, C, *spatial) images, e.g. reconstructions.
        y: reference images, same shape.
        data_range: intensity range of the images (1.0 for [0, 1], 2.0 for [-1, 1]).
        reduction: ``"mean"`` -> scalar; ``"none"`` -> (B,). Identical images give ``inf``.
    """
    _check_pair(x, y, "psnr")
    values = PSNRMetric(max_val=data_range, reduction="none")(y_pred=x.float(), y=y.float())
    return _reduce(values, reduction, "psnr")


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = 11,
    kernel_sigma: float = 1.5,
    reduction: str = "mean",
) -> torch.Tensor:
    """Structural similarity with a Gaussian window (``monai.metrics.SSIMMetric``), per image then reduced.

    Args:
        x: (B, C, *spatial) images; each spatial size must be at least ``win_size``.
        y: reference images, same shape.
        data_range: intensity range of the images.
        win_size: Gaussian window size.
        kernel_sigma: Gaussian window standard deviation.
        reduction: ``"mean"`` -> scalar; ``"none"`` -> (B,).
    """
    dims = _check_pair(x, y, "ssim")
    if min(x.shape[2:]) < win_size:
        raise ValueError(
            f"ssim: spatial size {tuple(x.shape[2:])} is smaller than win_size={win_size}; lower win_size."
        )
    metric = SSIMMetric(
        spatial_dims=dims, data_range=data_range, win_size=win_size, kernel_sigma=kernel_sigma, reduction="none"
    )
    return _reduce(metric(y_pred=x.float(), y=y.float()), reduction, "ssim")


def ssim_diversity(
    images: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = 11,
    max_pairs: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Mean pairwise ``1 - SSIM`` among generated samples: 0 when all samples are identical (mode collapse).

    Compare it with the same measure on real images: a generator that covers the data should come close.

    Args:
        images: (N, C, *spatial) samples, N >= 2.
        data_range: intensity range of the images.
        win_size: SSIM Gaussian window size.
        max_pairs: evaluate at most this many randomly chosen pairs (all N(N-1)/2 pairs when None).
        generator: ``torch.Generator`` for the pair subset, for reproducibility.
        batch_size: pairs per SSIM call (memory bound).

    Returns:
        scalar tensor in [0, 2] (SSIM can be negative).
    """
    _spatial_dims(images, "ssim_diversity")
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"ssim_diversity: needs at least 2 images, got {n}.")
    i, j = torch.triu_indices(n, n, offset=1)
    if max_pairs is not None and i.numel() > max_pairs:
        keep = torch.randperm(i.numel(), generator=generator)[:max_pairs]
        i, j = i[keep], j[keep]
    total = images.new_zeros((), dtype=torch.float64)
    for start in range(0, i.numel(), batch_size):
        a, b = i[start : start + batch_size], j[start : start + batch_size]
        s = ssim(images[a], images[b], data_range=data_range, win_size=win_size, reduction="none")
        total += (1.0 - s.double()).sum()
    return (total / i.numel()).float()


def intensity_histogram(
    images: torch.Tensor, bins: int = 256, value_range: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """Normalised histogram (sums to 1) of all pixel/voxel values; values outside ``value_range`` are clamped
    into the edge bins so that no mass is silently dropped.

    Args:
        images: any-shaped tensor of intensities.
        bins: number of equal-width bins.
        value_range: (low, high) of the histogram.

    Returns:
        (bins,) float64 tensor.
    """
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise ValueError(f"intensity_histogram: value_range must satisfy low < high, got {value_range!r}.")
    values = images.detach().double().flatten().clamp(low, high)
    hist = torch.histc(values, bins=bins, min=low, max=high)
    return hist / hist.sum()


def histogram_wasserstein(
    real: torch.Tensor, fake: torch.Tensor, bins: int = 256, value_range: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """Wasserstein-1 distance between the intensity histograms of two image sets, in intensity units.

    Computed as ``sum |CDF_real - CDF_fake| * bin_width``; 0 for identical histograms.

    Args:
        real: real images (any shape; sets may differ in size).
        fake: generated images.
        bins: number of histogram bins.
        value_range: (low, high) intensity range shared by both sets.

    Returns:
        scalar float tensor.
    """
    p = intensity_histogram(real, bins, value_range)
    q = intensity_histogram(fake, bins, value_range)
    width = (float(value_range[1]) - float(value_range[0])) / bins
    return ((p.cumsum(0) - q.cumsum(0)).abs().sum() * width).float()


def histogram_intersection(
    real: torch.Tensor, fake: torch.Tensor, bins: int = 256, value_range: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """Histogram intersection ``sum_k min(p_k, q_k)`` of two image sets: 1 for identical histograms, 0 for disjoint.

    Args:
        real: real images (any shape).
        fake: generated images.
        bins: number of histogram bins.
        value_range: (low, high) intensity range shared by both sets.

    Returns:
        scalar float tensor in [0, 1].
    """
    p = intensity_histogram(real, bins, value_range)
    q = intensity_histogram(fake, bins, value_range)
    return torch.minimum(p, q).sum().float()


def radial_power_spectrum(images: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Mean radially averaged power spectrum of a set of 2D images: how much of the intensity variation sits at
    each spatial frequency (blur removes the high end, noise and grid artefacts raise it).

    Each image's mean is removed; the power ``|FFT|^2 / (H W)`` is averaged over rings of equal frequency
    ``sqrt(fy^2 + fx^2)`` in cycles per pixel, ``bins`` rings from 0 to Nyquist (0.5; the corners beyond it are
    left out), and over all images and channels. Frequencies are per pixel, so sets of different image sizes
    are comparable.

    Args:
        images: (N, C, H, W).
        bins: number of frequency rings.

    Returns:
        (bins,) float64 tensor, mean power per ring.
    """
    if images.dim() != 4:
        raise ValueError(f"radial_power_spectrum: expected (N, C, H, W) images, got shape {tuple(images.shape)}.")
    x = images.detach().double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    h, w = x.shape[-2:]
    power = (torch.fft.fft2(x).abs() ** 2 / (h * w)).mean(dim=(0, 1))
    fy, fx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).flatten()
    ring = (radius / 0.5 * bins).long().clamp_max(bins)  # bin `bins`: beyond Nyquist, dropped
    total = torch.zeros(bins + 1, dtype=torch.float64).index_add_(0, ring, power.flatten())
    count = torch.zeros(bins + 1, dtype=torch.float64).index_add_(0, ring, torch.ones_like(radius))
    return (total / count.clamp_min(1))[:bins]


def spectrum_distance(real: torch.Tensor, fake: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Mean absolute difference of the log10 radial power spectra of two image sets, in decades: 0 for equal
    spectra, 0.3 when one set has twice (or half) the power at every frequency.

    Args:
        real, fake: (N, C, H, W) image sets in the same intensity range (sizes may differ).
        bins: frequency rings (:func:`radial_power_spectrum`).

    Returns:
        scalar float tensor.
    """
    p, q = radial_power_spectrum(real, bins), radial_power_spectrum(fake, bins)
    tiny = torch.finfo(torch.float64).tiny
    return (p.clamp_min(tiny).log10() - q.clamp_min(tiny).log10()).abs().mean().float()
