"""Image-quality measures for 2D (B, C, H, W) and 3D (B, C, H, W, D) batches.

Paired measures (``psnr``, ``ssim``) wrap ``monai.metrics.PSNRMetric`` / ``SSIMMetric``. The weight-free
sample-quality measures (``ssim_diversity``, ``histogram_wasserstein``, ``histogram_intersection``,
``spectrum_distance``) need no feature network, so a trainer or a benchmark can use them when no FID/KID
weights are configured.
"""

from __future__ import annotations

import math

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
    "high_frequency_ratio",
    "spectrum_distance",
    "whole_image_quality",
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


def radial_power_spectrum(images: torch.Tensor, bins: int = 32, taper: bool = False) -> torch.Tensor:
    """Mean radially averaged power spectrum of a set of 2D images or 3D volumes: how much of the intensity
    variation sits at each spatial frequency (blur removes the high end, noise and grid artefacts raise it).

    Each image's mean is removed; the power ``|FFT|^2 / (number of pixels)`` is averaged over shells of equal
    frequency ``|f| = sqrt(fy^2 + fx^2 [+ fz^2])`` in cycles per pixel, ``bins`` shells of equal width from 0 to
    Nyquist (0.5; the corners beyond it are left out), and over all images and channels. Frequencies are per
    pixel, so sets of different image sizes are comparable.

    The FFT treats an image as periodic, so the step between its opposite borders counts as detail at every
    frequency; ``taper`` multiplies each (mean-free) image by a Hann window first, which removes that step,
    and divides by the window's energy instead of the pixel count (white noise keeps its power).

    Args:
        images: (N, C, H, W) or (N, C, H, W, D).
        bins: number of frequency shells; shell ``k`` holds ``k / (2 bins) <= |f| < (k + 1) / (2 bins)``.
        taper: apply a Hann window before the FFT.

    Returns:
        (bins,) float64 tensor, mean power per shell.
    """
    if images.dim() not in (4, 5):
        raise ValueError(
            f"radial_power_spectrum: expected (N, C, H, W) or (N, C, H, W, D) images, got shape {tuple(images.shape)}."
        )
    axes = tuple(range(2, images.dim()))
    x = images.detach().double()
    x = x - x.mean(dim=axes, keepdim=True)
    energy = float(x[0, 0].numel())
    if taper:
        window = torch.ones((), dtype=torch.float64)
        for n in x.shape[2:]:
            window = window[..., None] * torch.hann_window(n, periodic=False, dtype=torch.float64)
        x = x * window
        energy = (window**2).sum().item()
    power = (torch.fft.fftn(x, dim=axes).abs() ** 2 / energy).mean(dim=(0, 1))
    grids = torch.meshgrid(*(torch.fft.fftfreq(n, dtype=torch.float64) for n in x.shape[2:]), indexing="ij")
    radius = torch.sqrt(sum(g**2 for g in grids)).flatten()
    ring = (radius / 0.5 * bins).long().clamp_max(bins)  # bin `bins`: beyond Nyquist, dropped
    total = torch.zeros(bins + 1, dtype=torch.float64).index_add_(0, ring, power.flatten())
    count = torch.zeros(bins + 1, dtype=torch.float64).index_add_(0, ring, torch.ones_like(radius))
    return (total / count.clamp_min(1))[:bins]


def high_frequency_ratio(
    output: torch.Tensor, reference: torch.Tensor, band: tuple[float, float] = (0.25, 0.5), bins: int = 32
) -> float:
    """How much fine detail an output keeps: its radial power in a high-frequency band over the reference's.

    1.0: the same detail; < 1: blurred (a Gaussian blur of sigma pixels scales the power at frequency ``f`` by
    ``exp(-4 pi^2 sigma^2 f^2)``); > 1: added noise, ringing or grid artefacts. PSNR and SSIM reward a blurred
    reconstruction of a noisy or finely textured image; this ratio does not.

    The band is given in cycles per pixel (Nyquist is 0.5); the default ``(0.25, 0.5)`` is the top octave, the
    detail a 2x downsampling loses first, so blur shows there first. The power of each image is the mean of
    the :func:`radial_power_spectrum` shells whose centre frequencies lie in ``band`` (``bins`` shells of width
    ``0.5 / bins``; with the defaults, the upper 16 of 32), each image tapered by a Hann window (so the step
    between opposite borders, which blur does not remove, is not counted as detail). The ratio of two powers:
    a contrast scaled by ``a`` gives ``a^2``.

    Args:
        output: (N, C, H, W) or (N, C, H, W, D), e.g. reconstructions (power averaged over the batch).
        reference: the inputs they should match, same shape.
        band: (low, high) frequency limits in cycles per pixel, ``0 <= low < high <= 0.5``.
        bins: frequency shells of :func:`radial_power_spectrum`.

    Returns:
        the ratio (``inf`` when the reference has no power in the band and the output has some, ``nan`` when
        neither has).
    """
    low, high = float(band[0]), float(band[1])
    if not 0.0 <= low < high <= 0.5:
        raise ValueError(f"high_frequency_ratio: band must satisfy 0 <= low < high <= 0.5 cycles/pixel, got {band!r}.")
    _check_pair(output, reference, "high_frequency_ratio")
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) * 0.5 / bins
    inside = (centres >= low) & (centres <= high)
    if not inside.any():
        raise ValueError(f"high_frequency_ratio: no frequency shell of width {0.5 / bins} lies in {band!r}; raise bins.")
    out_power = radial_power_spectrum(output, bins, taper=True)[inside].mean().item()
    ref_power = radial_power_spectrum(reference, bins, taper=True)[inside].mean().item()
    if ref_power == 0.0:
        return math.nan if out_power == 0.0 else math.inf
    return out_power / ref_power


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


def whole_image_quality(
    output: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0, band: tuple[float, float] = (0.25, 0.5)
) -> dict[str, float]:
    """The quality of one whole reconstructed image (or volume) against its input, in one dict.

    Judge reconstructions on whole images, not patches: patch scores can overstate whole-image quality by
    several dB, and tile seams only exist on whole images.

    Args:
        output: (C, *spatial) reconstruction, 2D or 3D, intensities in the reference's range.
        reference: (C, *spatial) input image, same shape.
        data_range: intensity range of the images (1.0 for [0, 1]).
        band: frequency band of ``hf_ratio`` in cycles per pixel (:func:`high_frequency_ratio`).

    Returns:
        ``psnr`` (dB; ``inf`` for identical images), ``ssim``, ``hf_ratio`` (:func:`high_frequency_ratio`: 1.0
        the same detail, < 1 blurred, > 1 noise or artefacts) and ``std_ratio`` (the output's standard deviation
        over the input's: < 1 flattened contrast, as blur and regression to the mean give).
    """
    if output.dim() not in (3, 4):
        raise ValueError(f"whole_image_quality: expected one (C, H, W) or (C, H, W, D) image, got shape {tuple(output.shape)}.")
    _check_pair(output[None], reference[None], "whole_image_quality")
    ref_std = reference.double().std().item()
    return {
        "psnr": psnr(output[None], reference[None], data_range).item(),
        "ssim": ssim(output[None], reference[None], data_range).item(),
        "hf_ratio": high_frequency_ratio(output[None], reference[None], band),
        "std_ratio": output.double().std().item() / ref_std if ref_std > 0 else math.nan,
    }
