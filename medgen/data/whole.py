"""Whole images as a trained autoencoder sees them: training's deterministic preprocessing without the crop.

Used by ``medgen reconstruct`` / ``encode`` and by whole-image validation (``val_full_images``): read,
window to [0, 1], pad up to (``crop`` mode) or resize to (``resize`` mode) ``patch_size``, then pad to a
multiple of the model's downsampling factor so the whole image runs through the tiled encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.transforms import CenterSpatialCrop, DivisiblePad, Resize
from monai.utils import convert_to_tensor

from medgen.config import ConfigError, VAEConfig
from medgen.data.transforms import LoadDentalImaged, deterministic_transforms

__all__ = ["plain", "preprocess", "model_input", "to_image_shape"]


def plain(t) -> torch.Tensor:
    """A plain tensor: MONAI transforms may return MetaTensors, which weights_only loading rejects."""
    return convert_to_tensor(t, track_meta=False)


def preprocess(cfg: VAEConfig, item: Any, transforms: Sequence | None = None):
    """Training's deterministic preprocessing of one image.

    Args:
        cfg: the training config (window percentiles, ``patch_mode``, ``patch_size``).
        item: the image path (or anything with a ``path`` attribute).
        transforms: ``deterministic_transforms(cfg, patch_size)`` when already built (saves rebuilding per image).

    Returns:
        ``(image, image_shape, spacing)``: float32 tensor ``(1, *spatial)`` in [0, 1] as the model saw it
        in training (padded up to or resized to ``patch_size``), the spatial shape as read, and the spacing.
    """
    path = Path(getattr(item, "path", item))
    chain = transforms if transforms is not None else deterministic_transforms(cfg, cfg.autoencoder_train.patch_size)
    data: dict[str, Any] = {"image": str(path)}
    shape = None
    for t in chain:
        data = t(data)
        if isinstance(t, LoadDentalImaged):
            shape = tuple(data["image"].shape[1:])
            if len(shape) != cfg.spatial_dims:
                raise ConfigError(
                    f"{path} is a {len(shape)}D image but the checkpoint's model is {cfg.spatial_dims}D "
                    f"(spatial_dims={cfg.spatial_dims}); use a {cfg.spatial_dims}D model for it"
                )
    spacing = tuple(float(s) for s in data["image_spacing"])
    return plain(data["image"]).float(), shape, spacing


def model_input(cfg: VAEConfig, item: Any, transforms: Sequence | None = None):
    """:func:`preprocess`, batched and (``crop`` mode) zero-padded on both sides to a multiple of the
    downsampling factor: ``(x (1, C, *model_shape), image_shape, spacing)``."""
    x, image_shape, spacing = preprocess(cfg, item, transforms)
    if cfg.patch_mode == "crop":
        x = plain(DivisiblePad(k=cfg.autoencoder_def.downsample_factor)(x))
    return x[None], image_shape, spacing


def to_image_shape(y: torch.Tensor, image_shape: Sequence[int], patch_mode: str) -> torch.Tensor:
    """Undo the preprocessing's change of size: (C, *model_shape) -> (C, *image_shape)."""
    if tuple(y.shape[1:]) == tuple(image_shape):
        return y
    if patch_mode == "resize":
        mode = "bilinear" if len(image_shape) == 2 else "trilinear"
        return plain(Resize(spatial_size=tuple(image_shape), mode=mode)(y))
    # every pad was symmetric and on each axis at most one pad was non-zero, so a centre crop inverts it
    return plain(CenterSpatialCrop(roi_size=tuple(image_shape))(y))
