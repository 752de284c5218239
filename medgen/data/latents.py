"""Whole-image latents cached on disk, and random latent crops of them for diffusion training.

A latent file holds ``{"z_mu": (latent_channels, *latent_spatial), "image_shape", "model_shape"}`` and is named
by :func:`latent_key`: a hash of everything the latent depends on (the autoencoder file's size and mtime,
the preprocessing and tiling, the image's path and change stamp). A new or retrained autoencoder, a changed
window or an edited file gives a new name, so a stale latent is never read; encoding happens only for the
names not yet on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medgen.data.datasets import item_seed
from medgen.io.checkpoint import load_checkpoint
from medgen.io.discovery import item_signature

LATENT_CACHE_VERSION = 1


def file_stamp(path: str | os.PathLike) -> str:
    """Size and mtime of a file: what the latent cache keys a checkpoint on (cheap; a rewrite changes it)."""
    st = Path(path).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def latent_key(image: str | os.PathLike, settings: dict) -> str:
    """The cache name of one image's latent under ``settings`` (autoencoder stamp, preprocessing, tiling)."""
    text = json.dumps([LATENT_CACHE_VERSION, settings, str(Path(image).resolve()), item_signature(image)], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


def load_latent(path: str | os.PathLike) -> torch.Tensor:
    """The ``z_mu`` of a cached latent file (memory-mapped: a crop reads only what it needs)."""
    return load_checkpoint(path, mmap=True)["z_mu"]


class LatentCrops(torch.utils.data.Dataset):
    """Random crops of ``crop`` latent pixels from whole-image latent files, with the image's class index.

    Indexed with ``(epoch, index)`` (:class:`medgen.data.datasets.EpochSampler`) the crop position depends only on
    ``(seed, epoch, index)``, so resumed and multi-process runs draw the same crops as an uninterrupted one.

    Returns:
        ``{"image": (latent_channels, *crop) float32, "label": class index}``.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], crop: Sequence[int], seed: int):
        self.paths, self.labels, self.crop, self.seed = list(paths), list(labels), tuple(crop), seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        z = load_latent(self.paths[index])
        rng = np.random.default_rng(item_seed(self.seed, epoch, index))
        starts = [int(rng.integers(0, s - c + 1)) for s, c in zip(z.shape[1:], self.crop)]
        box = tuple(slice(a, a + c) for a, c in zip(starts, self.crop))
        return {"image": z[(slice(None), *box)].float().clone(), "label": self.labels[index]}


__all__ = ["LatentCrops", "file_stamp", "latent_key", "load_latent"]
