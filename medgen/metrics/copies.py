"""Copy check: how close each generated image is to its nearest training image.

Distance: ``1 - NCC`` (normalised cross-correlation) of thumbnails, 64x64 for images and 32^3 for volumes
(area-averaged, first channel), minimised over small shifts and the left-right mirror of the sample. Why this
distance:

- a generator that memorised a patient's radiograph reproduces its anatomy and layout, which survives
  downsampling; the noise, tile seams and fine texture a sampler changes do not, and they would hide a
  copy from a pixel-level distance;
- NCC ignores brightness and contrast (an affine change of intensities), so a copy that came out a little
  brighter or with another window is still at distance ~0; with images in [0, 1] it needs no feature
  network and no weights (nothing to download, deterministic);
- a copy may come out mirrored, shifted or slightly cropped: each sample is compared through its *probes*,
  thumbnail windows of the sample and of its mirror image at every offset within :data:`SHIFT` thumbnail
  pixels of the centre (a few percent of the image), also after shrinking it by the :data:`SCALES` (a copy
  of a 90-95% crop of a training image), and the closest probe counts;
- at 64^2 the distance matrix of thousands of images is a few matrix products.

Thresholds come from the training set itself (:func:`calibrate`): distinct training images (different
patients) sit at some distance from each other; a sample much closer to a training image than training
images are to their own nearest neighbours is flagged as a copy, and a sample much farther from every training
image than they are from each other is *unlike* them (noise, a broken model): the check cannot judge it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["THUMBNAIL", "SHIFT", "SCALES", "MARGIN", "thumbnail", "probes", "ncc_distances", "nearest", "calibrate"]

THUMBNAIL = {2: (64, 64), 3: (32, 32, 32)}
# thumbnail pixels searched each way for a shifted copy (4 of 64: about 6% of the image)
SHIFT = {2: 4, 3: 1}
# sizes the sample is also probed at, relative to the training thumbnails: a copy of a cropped training image
SCALES = (1.0, 0.95, 0.9)
# the copy threshold as a share of how close distinct training images get (their 5th-percentile nearest-neighbour
# distance): on the public panoramics shifted, cropped and mirrored copies sit below 0.1 of it and held-out
# images of other patients at or above it
MARGIN = 0.75


def _grid(image: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``(C, *spatial)`` -> the first channel area-resized to ``scale`` x (the thumbnail plus the search margin
    on every side)."""
    x = image[:1].float()[None]
    dims = x.ndim - 2
    return F.interpolate(x, size=[round(scale * (s + 2 * SHIFT[dims])) for s in THUMBNAIL[dims]], mode="area")[0, 0]


def _normalised(t: torch.Tensor) -> torch.Tensor:
    """Rows (..., d) made zero-mean and unit-norm."""
    t = t - t.mean(dim=-1, keepdim=True)
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def _window(grid: torch.Tensor, offset: tuple[int, ...]) -> torch.Tensor:
    return grid[tuple(slice(o, o + s) for o, s in zip(offset, THUMBNAIL[grid.ndim]))].flatten()


def thumbnail(image: torch.Tensor) -> torch.Tensor:
    """``(C, *spatial)`` -> the flattened zero-mean, unit-norm thumbnail of its first channel (area resize):
    the centre window, what training images are compared as."""
    shift = SHIFT[image.ndim - 1]
    grid = _grid(image)
    return _normalised(_window(grid, (shift,) * grid.ndim))


def probes(image: torch.Tensor) -> torch.Tensor:
    """``(C, *spatial)`` -> ``(V, d)``: the thumbnail windows of the image and of its left-right mirror (last
    axis), at every offset of the grid at each of the :data:`SCALES`; the first is :func:`thumbnail`'s."""
    windows = [thumbnail(image)]
    for scale in SCALES:
        grid = _grid(image, scale)
        size = THUMBNAIL[grid.ndim]
        if any(g < s for g, s in zip(grid.shape, size)):
            continue
        offsets = itertools.product(*(range(g - s + 1) for g, s in zip(grid.shape, size)))
        windows += [_window(g, o) for o in offsets for g in (grid, grid.flip(-1))]
    return _normalised(torch.stack(windows))


def ncc_distances(a: torch.Tensor | Sequence[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
    """``1 - NCC`` between ``a`` and the rows of ``b`` (m, d) from :func:`thumbnail`; (n, m) in [0, 2]. ``a`` is
    thumbnails (n, d), or n images ``(C, *spatial)`` compared through their :func:`probes` (the closest counts;
    one image at a time, so memory stays that of one image's probes)."""
    if isinstance(a, torch.Tensor):
        return (1.0 - a @ b.T).clamp(0.0, 2.0)
    rows = [(1.0 - probes(x) @ b.T).min(dim=0).values for x in a]
    return torch.stack(rows).clamp(0.0, 2.0) if rows else b.new_zeros((0, b.shape[0]))


def nearest(samples: torch.Tensor | Sequence[torch.Tensor], train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample (thumbnails ``(n, d)``, or images compared through their probes): ``(distance to the
    nearest training thumbnail, its index)``."""
    return ncc_distances(samples, train).min(dim=1)


def calibrate(train: torch.Tensor, percentile: float = 5.0, margin: float = MARGIN,
              images: Sequence[torch.Tensor] | None = None, unlike_factor: float = 3.0) -> dict[str, float]:
    """The copy threshold (and the distance beyond which a sample cannot be judged) from the training
    thumbnails (n >= 2) alone.

    Each training image's distance to its nearest OTHER training image measures how close two different
    patients' images get; ``threshold = margin x`` the ``percentile``-th percentile of those distances (a
    percentile rather than the minimum, so that one duplicated training file does not set it to zero).
    ``unlike = unlike_factor x`` their median: a sample farther than that from every training image looks like
    none of them (noise, a model that has not learnt the images), so that it is not a copy says nothing. Give
    the training ``images`` themselves when samples are compared through their probes, so that both sides are
    measured alike.

    Returns:
        ``threshold``, ``unlike``, ``train_nn_min``, ``train_nn_percentile``, ``train_nn_median``,
        ``train_nn_max``, ``percentile``, ``margin``.
    """
    if train.shape[0] < 2:
        raise ValueError("calibrating the copy threshold needs at least 2 training images")
    d = ncc_distances(train if images is None else images, train)
    d.fill_diagonal_(float("inf"))
    nn = d.min(dim=1).values.double()
    low = torch.quantile(nn, percentile / 100.0).item()
    return {"threshold": margin * low, "unlike": min(2.0, unlike_factor * nn.median().item()), "train_nn_min": nn.min().item(),
            "train_nn_percentile": low, "train_nn_median": nn.median().item(), "train_nn_max": nn.max().item(),
            "percentile": percentile, "margin": margin}
