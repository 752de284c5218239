"""Copy check: how close each generated image is to its nearest training image.

Distance: ``1 - NCC`` (normalised cross-correlation) of thumbnails, 64x64 for images and 32^3 for volumes
(area-averaged, first channel). Why this distance:

- a generator that memorised a patient's radiograph reproduces its anatomy and layout, which survives
  downsampling; the noise, tile seams and fine texture a sampler changes do not, and they would hide a
  copy from a pixel-level distance;
- NCC ignores brightness and contrast (an affine change of intensities), so a copy that came out a little
  brighter or with another window is still at distance ~0; with images in [0, 1] it needs no feature
  network and no weights (nothing to download, deterministic);
- at 64^2 the distance matrix of thousands of images is one matrix product.

Thresholds come from the training set itself (:func:`calibrate`): distinct training images (different
patients) sit at some distance from each other; a sample much closer to a training image than training
images are to their own nearest neighbours is flagged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["THUMBNAIL", "thumbnail", "ncc_distances", "nearest", "calibrate"]

THUMBNAIL = {2: (64, 64), 3: (32, 32, 32)}


def thumbnail(image: torch.Tensor) -> torch.Tensor:
    """``(C, *spatial)`` -> the flattened zero-mean, unit-norm thumbnail of its first channel (area resize)."""
    x = image[:1].float()[None]
    size = THUMBNAIL[x.ndim - 2]
    t = F.interpolate(x, size=size, mode="area").flatten()
    t = t - t.mean()
    return t / t.norm().clamp_min(1e-8)


def ncc_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - NCC`` between rows of ``a`` (n, d) and of ``b`` (m, d), both from :func:`thumbnail`; (n, m) in [0, 2]."""
    return (1.0 - a @ b.T).clamp(0.0, 2.0)


def nearest(samples: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample thumbnail: ``(distance to the nearest training thumbnail, its index)``."""
    return ncc_distances(samples, train).min(dim=1)


def calibrate(train: torch.Tensor, percentile: float = 5.0, margin: float = 0.5) -> dict[str, float]:
    """The copy threshold from the training thumbnails (n >= 2) alone.

    Each training image's distance to its nearest OTHER training image measures how close two different
    patients' images get; ``threshold = margin x`` the ``percentile``-th percentile of those distances (a
    percentile rather than the minimum, so that one duplicated training file does not set it to zero).

    Returns:
        ``threshold``, ``train_nn_min``, ``train_nn_percentile``, ``train_nn_median``, ``percentile``, ``margin``.
    """
    if train.shape[0] < 2:
        raise ValueError("calibrating the copy threshold needs at least 2 training images")
    d = ncc_distances(train, train)
    d.fill_diagonal_(float("inf"))
    nn = d.min(dim=1).values.double()
    low = torch.quantile(nn, percentile / 100.0).item()
    return {"threshold": margin * low, "train_nn_min": nn.min().item(), "train_nn_percentile": low,
            "train_nn_median": nn.median().item(), "percentile": percentile, "margin": margin}
