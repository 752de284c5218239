"""Sample and reconstruction quality: PSNR/SSIM, weight-free diversity, histogram and power-spectrum distances, whole-image
reconstruction quality (PSNR, SSIM, high-frequency and contrast ratios), the seam ratio of tiled reconstructions
(:mod:`medgen.metrics.seams`), FID/KID (on a feature network from a local file or from the weights directory), and
the copy check (nearest training image of each sample, :mod:`medgen.metrics.copies`)."""

from __future__ import annotations

from .feature_extractor import FeatureExtractor, feature_network_problem
from .fid import fid, kid, polynomial_kernel
from .image_quality import (
    histogram_intersection,
    high_frequency_ratio,
    histogram_wasserstein,
    intensity_histogram,
    psnr,
    radial_power_spectrum,
    spectrum_distance,
    ssim,
    ssim_diversity,
    whole_image_quality,
)
from .seams import seam_ratio

__all__ = [
    "FeatureExtractor",
    "feature_network_problem",
    "fid",
    "kid",
    "polynomial_kernel",
    "psnr",
    "ssim",
    "ssim_diversity",
    "intensity_histogram",
    "histogram_wasserstein",
    "histogram_intersection",
    "radial_power_spectrum",
    "spectrum_distance",
    "seam_ratio",
    "high_frequency_ratio",
    "whole_image_quality",
]
