"""The transform chains (MONAI dict transforms), defined once for training, validation and the bundles.

Each chain is ``deterministic + random``: the deterministic part (read, intensity window, resize or pad)
is what the dataset caches; the random part (crop, augmentation) runs every epoch.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    EnsureTyped,
    MapTransform,
    RandAdjustContrastd,
    RandFlipd,
    RandRotated,
    RandScaleIntensityd,
    RandSpatialCropd,
    Resized,
    ScaleIntensityRangePercentilesd,
    SpatialPadd,
)

from medgen.config.vae import RunConfig


class LoadDentalImaged(MapTransform):
    """Read each key's path with :func:`medgen.data.reader.read_image` (DICOM file or series, NIfTI, PNG).

    Output: a float32 tensor (C, *spatial) in presentation form; the spacing goes to ``{key}_spacing``.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from medgen.data.reader import read_image

        d = dict(data)
        for key in self.key_iterator(d):
            array, spacing = read_image(d[key])
            d[key] = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))
            d[f"{key}_spacing"] = torch.as_tensor(spacing, dtype=torch.float64)
        return d


def deterministic_transforms(cfg: RunConfig, patch_size: Sequence[int], keys: str = "image") -> list:
    """Read, window to [0, 1], then resize to ``patch_size`` or pad up to it (``patch_mode``)."""
    lo, hi = cfg.intensity_percentiles
    chain = [
        LoadDentalImaged(keys),
        ScaleIntensityRangePercentilesd(keys, lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True),
    ]
    if cfg.patch_mode == "resize":
        chain.append(Resized(keys, spatial_size=tuple(patch_size), mode="area"))
    else:
        chain.append(SpatialPadd(keys, spatial_size=tuple(patch_size)))
    chain.append(EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    return chain


def random_transforms(cfg: RunConfig, patch_size: Sequence[int], keys: str = "image") -> list:
    """Random crop to ``patch_size`` and, when ``augment`` is on, radiograph-safe augmentation."""
    chain = []
    if cfg.patch_mode == "crop":
        chain.append(RandSpatialCropd(keys, roi_size=tuple(patch_size), random_size=False))
    if cfg.augment:
        chain += [
            RandFlipd(keys, prob=0.5, spatial_axis=len(patch_size) - 1),  # left-right mirror of the jaw
            RandRotated(keys, range_x=0.1, prob=0.3, keep_size=True, padding_mode="zeros"),  # about 6 degrees
            RandScaleIntensityd(keys, factors=0.1, prob=0.3),
            RandAdjustContrastd(keys, gamma=(0.8, 1.25), prob=0.3),
        ]
    chain.append(EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    return chain


def train_transforms(cfg: RunConfig, patch_size: Sequence[int], keys: str = "image") -> Compose:
    return Compose(deterministic_transforms(cfg, patch_size, keys) + random_transforms(cfg, patch_size, keys))


def val_transforms(cfg: RunConfig, patch_size: Sequence[int], keys: str = "image") -> Compose:
    chain = deterministic_transforms(cfg, patch_size, keys)
    if cfg.patch_mode == "crop":
        chain.append(CenterSpatialCropd(keys, roi_size=tuple(patch_size)))
    return Compose(chain)
