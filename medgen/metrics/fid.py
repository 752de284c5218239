"""Distances between two sets of feature vectors: FID and KID.

Features come from a network whose weights the user supplies (:class:`medgen.metrics.FeatureExtractor`).
FID reuses ``monai.metrics.FIDMetric`` (needs scipy for the matrix square root). KID is written here because
MONAI has none: the unbiased MMD^2 with the cubic polynomial kernel of Binkowski et al. 2018, averaged over
random subsets.
"""

from __future__ import annotations

import torch
from monai.metrics import FIDMetric
from monai.utils import optional_import

_, _HAS_SCIPY = optional_import("scipy.linalg")

__all__ = ["fid", "kid", "polynomial_kernel"]


def _check_features(real: torch.Tensor, fake: torch.Tensor, name: str, min_count: int = 2) -> None:
    for label, f in (("real", real), ("fake", fake)):
        if f.dim() != 2:
            raise ValueError(f"{name}: {label} features must be (N, D), got shape {tuple(f.shape)}.")
        if f.shape[0] < min_count:
            raise ValueError(f"{name}: needs at least {min_count} {label} feature vectors, got {f.shape[0]}.")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"{name}: feature sizes differ: real {real.shape[1]} vs fake {fake.shape[1]}.")


def fid(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> torch.Tensor:
    """Frechet distance between Gaussians fitted to two feature sets (``monai.metrics.FIDMetric``).

    Args:
        real_feats: (N_real, D) features of real images.
        fake_feats: (N_fake, D) features of generated images.

    Returns:
        scalar float64 tensor (0 for identical sets; grows with the shift of means and covariances).
        With fewer samples than feature dimensions the covariances are singular and the value is biased.
    """
    _check_features(real_feats, fake_feats, "fid")
    if not _HAS_SCIPY:
        raise ImportError("fid: monai.metrics.FIDMetric needs scipy for the matrix square root; `pip install scipy`.")
    return FIDMetric()(fake_feats.detach().cpu(), real_feats.detach().cpu()).real


def polynomial_kernel(
    x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> torch.Tensor:
    """``k(x, y) = (gamma * <x, y> + coef0) ** degree`` for all pairs; ``gamma`` defaults to 1 / D.

    Args:
        x: (N, D) tensor.
        y: (M, D) tensor.

    Returns:
        (N, M) kernel matrix.
    """
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * x @ y.T + coef0) ** degree


def kid(
    real_feats: torch.Tensor,
    fake_feats: torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel Inception Distance: unbiased MMD^2 with a polynomial kernel, mean and std over random subsets.

    For each subset, ``m = min(subset_size, N_real, N_fake)`` vectors are drawn without replacement from
    each set and ``MMD_u^2 = sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1))
    - 2 sum_{i,j} k(x_i,y_j)/m^2``. Unbiased, so it can be slightly negative for matching distributions.

    Args:
        real_feats: (N_real, D) features of real images.
        fake_feats: (N_fake, D) features of generated images.
        num_subsets: number of random subsets averaged.
        subset_size: subset size, capped at the smaller set.
        degree: polynomial kernel degree.
        gamma: kernel scale, 1 / D when None.
        coef0: kernel offset.
        generator: ``torch.Generator`` for the subsets, for reproducibility.

    Returns:
        ``(kid_mean, kid_std)`` float64 scalars (std is 0 with one subset).
    """
    _check_features(real_feats, fake_feats, "kid")
    if num_subsets < 1:
        raise ValueError(f"kid: num_subsets must be >= 1, got {num_subsets}.")
    x_all = real_feats.detach().double().cpu()
    y_all = fake_feats.detach().double().cpu()
    m = min(subset_size, x_all.shape[0], y_all.shape[0])
    if m < 2:
        raise ValueError(f"kid: subset_size must be >= 2, got {subset_size}.")
    values = []
    for _ in range(num_subsets):
        x = x_all[torch.randperm(x_all.shape[0], generator=generator)[:m]]
        y = y_all[torch.randperm(y_all.shape[0], generator=generator)[:m]]
        k_xx = polynomial_kernel(x, x, degree, gamma, coef0)
        k_yy = polynomial_kernel(y, y, degree, gamma, coef0)
        k_xy = polynomial_kernel(x, y, degree, gamma, coef0)
        mmd = (
            (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
            + (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
            - 2.0 * k_xy.sum() / (m * m)
        )
        values.append(mmd)
    stacked = torch.stack(values)
    std = stacked.std(unbiased=False) if num_subsets > 1 else stacked.new_zeros(())
    return stacked.mean(), std
