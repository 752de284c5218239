"""How visible the borders of stitched tiles are: the seam ratio of tiled reconstructions.

``medgen reconstruct --report`` and ``benchmarks/bench_tiled.py`` measure it at the tile borders that
:func:`medgen.models.tiled.output_borders` gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["seam_ratio"]


def seam_ratio(image: torch.Tensor, borders: Sequence[Sequence[int]], reference: torch.Tensor | None = None) -> float:
    """How visible tile borders are: the mean absolute step between neighbouring pixels across the borders,
    divided by the mean step across lines halfway between borders (1.0: invisible; a seam makes it larger).

    A real image has its own edges, and a few border lines can fall on them (the horizontal bands a panoramic
    scanner leaves, the edge of a label): with ``reference`` (the input the output reconstructs) the output's
    ratio is divided by the reference's at the same lines, so 1.0 means "no more visible than in the input"
    and only what the tiling added counts.

    Args:
        image: ``(C, *spatial)`` or ``(*spatial)``.
        borders: per spatial axis, the positions ``b`` of tile borders (the step is ``image[b] - image[b-1]``).
        reference: optional, same shape as ``image``.

    Returns:
        the ratio, or ``nan`` when the image has no inner border (or the reference is flat at the lines).
    """
    if reference is not None:
        if reference.shape != image.shape:
            raise ValueError(f"seam_ratio: reference shape {tuple(reference.shape)} differs from the image's {tuple(image.shape)}")
        own = seam_ratio(reference, borders)
        return seam_ratio(image, borders) / own if math.isfinite(own) and own > 0 else math.nan
    img = image.float()
    nd = len(borders)
    if img.ndim == nd:
        img = img[None]
    at, mid = [], []
    for d, bs in enumerate(borders):
        axis = 1 + d
        n = img.shape[axis]
        inner = sorted(b for b in bs if 0 < b < n)
        if not inner:
            continue
        edges = [0, *inner, n]
        centres = sorted({(lo + hi) // 2 for lo, hi in zip(edges, edges[1:]) if 0 < (lo + hi) // 2 < n})
        for b in inner:
            at.append((img.select(axis, b) - img.select(axis, b - 1)).abs().mean())
        for c in centres:
            mid.append((img.select(axis, c) - img.select(axis, c - 1)).abs().mean())
    if not at or not mid:
        return math.nan
    inside = torch.stack(mid).mean().item()
    return torch.stack(at).mean().item() / inside if inside > 0 else math.inf
