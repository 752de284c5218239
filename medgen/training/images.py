"""Image grids for TensorBoard: inputs beside reconstructions; volumes as three orthogonal middle slices."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _pad_to(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.pad(img, (0, w - img.shape[-1], 0, h - img.shape[-2]))


def tri_planar(volume: torch.Tensor) -> torch.Tensor:
    """(C, D, H, W) -> (C, max(D,H), D+H+W'): the middle slices across each axis, side by side.

    Returns the axial (D middle), coronal (H middle) and sagittal (W middle) slices, padded to one height.
    """
    c, d, h, w = volume.shape
    slices = [volume[:, d // 2], volume[:, :, h // 2], volume[:, :, :, w // 2]]
    height = max(s.shape[-2] for s in slices)
    return torch.cat([_pad_to(s, height, s.shape[-1]) for s in slices], dim=-1)


def as_2d(image: torch.Tensor) -> torch.Tensor:
    """(C, *spatial) -> (C, H, W): 2D images unchanged, volumes as their tri-planar view."""
    return tri_planar(image) if image.ndim == 4 else image


def fit(image: torch.Tensor, size: int = 256) -> torch.Tensor:
    """(C, *spatial) scaled down (area averaging, aspect kept) so that no side exceeds ``size``."""
    scale = size / max(image.shape[1:])
    if scale >= 1:
        return image
    shape = [max(1, round(s * scale)) for s in image.shape[1:]]
    return F.interpolate(image[None].float(), size=shape, mode="area")[0]


def comparison_grid(columns: Sequence[Sequence[torch.Tensor] | torch.Tensor], max_rows: int = 8, gap: int = 2) -> torch.Tensor:
    """One row per sample, one column per tensor (e.g. input, reconstruction).

    Args:
        columns: per column a batch (B, C, *spatial) or a list of (C, *spatial) images of any sizes, in [0, 1];
            only the first channel is shown.
    Returns:
        (1, H, W) float tensor in [0, 1] for ``SummaryWriter.add_image``.
    """
    rows = []
    n = min(max_rows, min(len(c) for c in columns))
    for i in range(n):
        tiles = [as_2d(c[i].detach().float().cpu())[:1].clamp(0, 1) for c in columns]
        height = max(t.shape[-2] for t in tiles)
        row = [F.pad(_pad_to(t, height, t.shape[-1]), (0, gap)) for t in tiles]
        rows.append(torch.cat(row, dim=-1))
    width = max(r.shape[-1] for r in rows)
    return torch.cat([F.pad(_pad_to(r, r.shape[-2], width), (0, 0, 0, gap)) for r in rows], dim=-2)
