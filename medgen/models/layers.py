"""Small network layers shared by the medgen decoders."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CropPad", "crop_pad_amounts"]


def crop_pad_amounts(in_size: Sequence[int], out_size: Sequence[int]) -> list[int]:
    """Per-side amounts that centre ``in_size`` inside ``out_size``, in ``torch.nn.functional.pad`` order.

    Positive values pad, negative values crop. The "before" side always gets ``(out - in) // 2`` (floor
    for padding, towards the start for cropping), so cropping a padded tensor back to its size returns
    exactly the original values (pad ``n -> m`` and crop ``m -> n`` use the same offset).

    Args:
        in_size: current spatial size, one entry per spatial dim.
        out_size: wanted spatial size, same length.

    Returns:
        ``[before_last, after_last, before_second_last, after_second_last, ...]``.
    """
    if len(in_size) != len(out_size):
        raise ValueError(f"crop_pad_amounts: {tuple(in_size)} and {tuple(out_size)} have different lengths.")
    pads: list[int] = []
    for n, m in zip(reversed(tuple(in_size)), reversed(tuple(out_size)), strict=True):
        diff = m - n
        # the smaller half goes before for both signs (pad 3 -> (1, 2), crop 3 -> (-1, -2)), so a crop
        # undoes a pad exactly.
        before = diff // 2 if diff >= 0 else -((-diff) // 2)
        pads += [before, diff - before]
    return pads


class CropPad(nn.Module):
    """Centre-crop or zero-pad the trailing spatial dims of a tensor to a fixed size.

    Each spatial dim is handled independently: larger dims are centre-cropped, smaller ones zero-padded
    symmetrically (the odd pixel goes after). ``CropPad(n)`` applied after ``CropPad(m)`` with ``m > n``
    recovers the original centre exactly. Written by hand because MONAI's ``ResizeWithPadOrCrop`` is a
    per-sample transform (no batch dim, no autograd focus); ``F.pad`` with negative widths does both
    operations in one differentiable call on a batch.

    Args:
        size: wanted spatial size; an int applies to every spatial dim.
        spatial_dims: number of trailing dims to treat as spatial. ``None`` means ``x.ndim - 2``
            (a ``(B, C, *spatial)`` batch), or ``len(size)`` when ``size`` is a sequence.

    Example:
        >>> CropPad(8)(torch.ones(1, 1, 5, 12)).shape
        torch.Size([1, 1, 8, 8])
    """

    def __init__(self, size: int | Sequence[int], spatial_dims: int | None = None) -> None:
        super().__init__()
        sizes = (size,) if isinstance(size, int) else tuple(int(s) for s in size)
        if any(s < 1 for s in sizes):
            raise ValueError(f"CropPad: size must be positive, got {size}.")
        if spatial_dims is not None and not isinstance(size, int) and len(sizes) != spatial_dims:
            raise ValueError(f"CropPad: size {tuple(sizes)} has {len(sizes)} entries but spatial_dims={spatial_dims}.")
        self.size = sizes
        self.spatial_dims = (
            spatial_dims if spatial_dims is not None else (None if isinstance(size, int) else len(sizes))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: tensor shaped ``(..., *spatial)``; by default ``(B, C, *spatial)``.

        Returns:
            tensor shaped ``(..., *size)``.
        """
        nd = self.spatial_dims if self.spatial_dims is not None else x.ndim - 2
        if nd < 1 or nd > x.ndim:
            raise ValueError(f"CropPad: cannot take {nd} spatial dims from a tensor of shape {tuple(x.shape)}.")
        target = self.size * nd if len(self.size) == 1 else self.size
        in_size = tuple(x.shape[-nd:])
        if in_size == tuple(target):
            return x
        return F.pad(x, crop_pad_amounts(in_size, target))

    def extra_repr(self) -> str:
        return f"size={self.size if len(self.size) > 1 else self.size[0]}"
