"""Latent files: the one format ``medgen encode`` writes and latent diffusion caches, and its one loader.

A latent file (``.pt``; ``medgen encode --latent-format npz`` also writes ``.npz``) holds one whole image's:

- ``z_mu``: ``(latent_channels, *latent_spatial)`` float32; ``z``: one sample ``z_mu + z_sigma * eps``
  (only when sampling was asked for);
- ``image_shape``: the spatial shape as read; ``model_shape``: the shape that was encoded (after padding or
  resizing); ``spacing``, ``patch_mode`` and ``downsample_factor``;
- ``tile_size`` and ``overlap``: the tiling it was encoded with (image pixels).

:func:`encode_image` makes one (training's preprocessing, then the tiled encoder), :func:`save_latent` writes
it, :func:`load_latent` reads it; :class:`RunningMoments` gives the mean and standard deviation of many latents
(the scale factor is ``1 / std``).

Latent diffusion caches one file per image, named by :func:`latent_key`: a hash of everything the latent
depends on (the autoencoder file's size and mtime, the preprocessing and tiling, the image's path and change
stamp). A new or retrained autoencoder, a changed window or an edited file gives a new name, so a stale
latent is never read; encoding happens only for the names not yet on disk. :class:`LatentCrops` cuts random
crops from the cached latents for training.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgen.config import ConfigError, VAEConfig
from medgen.data.datasets import item_seed
from medgen.data.whole import model_input
from medgen.io.checkpoint import load_checkpoint, save_checkpoint
from medgen.io.discovery import item_signature
from medgen.io.files import atomic_path

LATENT_CACHE_VERSION = 1
LATENT_FORMATS = ("pt", "npz")


# ------------------------------------------------------------------------------------------- the file
def encode_image(
    cfg: VAEConfig,
    image: Any,
    encoder: Callable[[torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor]],
    tiling: Any,
    transforms: Sequence | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """One image's latent record, as ``medgen encode`` writes it and latent diffusion caches it.

    Args:
        cfg: the autoencoder's training config: the image is preprocessed as in training
            (:func:`medgen.data.whole.model_input`: window, pad or resize, pad to the downsampling factor).
        image: the image path (or an item with a ``path``).
        encoder: ``encoder(x, tiling) -> (z_mu, z_sigma)`` for ``x`` ``(1, C, *model_shape)``: the autoencoder
            in tiles (:func:`medgen.models.tiled.tiled_encode` with the model bound).
        tiling: the :class:`medgen.models.tiled.Tiling` handed to ``encoder`` and recorded in the file.
        transforms: ``deterministic_transforms(cfg, patch_size)`` when already built.
        generator: when given, also draw one sample ``z`` with it.

    Returns:
        the record (see the module docstring); tensors on the CPU.
    """
    x, image_shape, spacing = model_input(cfg, image, transforms)
    z_mu, z_sigma = encoder(x, tiling)
    record: dict[str, Any] = {"z_mu": z_mu[0].float().cpu()}
    if generator is not None:
        eps = torch.randn(record["z_mu"].shape, generator=generator)
        record["z"] = record["z_mu"] + z_sigma[0].float().cpu() * eps
    record.update(
        image_shape=list(image_shape), model_shape=list(x.shape[2:]), spacing=list(spacing), patch_mode=cfg.patch_mode,
        downsample_factor=cfg.autoencoder_def.downsample_factor, tile_size=list(tiling.tile), overlap=list(tiling.overlap),
    )
    return record


def save_latent(record: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``record`` atomically: ``.npz`` (numpy, no pickle) by that suffix, else torch (``weights_only`` loadable)."""
    path = Path(path)
    if path.suffix != ".npz":
        return save_checkpoint(record, path)
    arrays = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in record.items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, **arrays)
    return path


def load_latent(path: str | os.PathLike, required: Sequence[str] = ("z_mu",)) -> dict[str, Any]:
    """A latent file as a dict (``.pt`` memory-mapped, so a crop reads only what it needs; ``.npz`` as numpy arrays).

    Raises:
        ConfigError: the file lacks one of the ``required`` keys.
    """
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            record = {k: f[k] for k in f.files}
    else:
        record = load_checkpoint(path, mmap=True)
    missing = [k for k in required if not isinstance(record, dict) or k not in record]
    if missing:
        raise ConfigError(f"{path} is not a latent file written by `medgen encode` (no {' / '.join(missing)})")
    return record


class RunningMoments:
    """Mean and variance over many tensors of different sizes (Chan et al.'s pairwise merge, float64)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, t: torch.Tensor) -> None:
        t = t.detach().double().flatten()
        part = RunningMoments()
        part.n, part.mean = t.numel(), t.mean().item()
        part.m2 = (t - part.mean).pow(2).sum().item()
        self.merge(part)

    def merge(self, other: RunningMoments) -> None:
        """Take in the values ``other`` has seen (another rank's share, say)."""
        if other.n == 0:
            return
        total = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / total
        self.m2 += other.m2 + delta * delta * self.n * other.n / total
        self.n = total

    @property
    def std(self) -> float:  # unbiased, as torch.std
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else float("nan")


# ------------------------------------------------------------------------------------------- the cache
def file_stamp(path: str | os.PathLike) -> str:
    """Size and mtime of a file: what the latent cache keys a checkpoint on (cheap; a rewrite changes it)."""
    st = Path(path).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def latent_key(image: str | os.PathLike, settings: dict) -> str:
    """The cache name of one image's latent under ``settings`` (autoencoder stamp, preprocessing, tiling)."""
    text = json.dumps([LATENT_CACHE_VERSION, settings, str(Path(image).resolve()), item_signature(image)], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


class LatentCrops(torch.utils.data.Dataset):
    """Random crops of ``crop`` latent pixels from whole-image latent files, with the image's class index.

    Indexed with ``(epoch, index)`` (:class:`medgen.data.datasets.EpochSampler`) the crop position depends only on
    ``(seed, epoch, index)``, so resumed and multi-process runs draw the same crops as an uninterrupted one.
    With ``repeats`` > 1 (``patches_per_image``) each latent appears that many times per epoch, each time cropped
    elsewhere: index ``j`` reads latent ``j % len(paths)``, its crop seeded from ``j``.

    Returns:
        ``{"image": (latent_channels, *crop) float32, "label": class index}``.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], crop: Sequence[int], seed: int, repeats: int = 1):
        self.paths, self.labels, self.crop, self.seed, self.repeats = list(paths), list(labels), tuple(crop), seed, repeats

    def __len__(self) -> int:
        return len(self.paths) * self.repeats

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, j = key if isinstance(key, tuple) else (0, key)
        index = j % len(self.paths)
        z = load_latent(self.paths[index])["z_mu"]
        rng = np.random.default_rng(item_seed(self.seed, epoch, j))
        starts = [int(rng.integers(0, s - c + 1)) for s, c in zip(z.shape[1:], self.crop)]
        box = tuple(slice(a, a + c) for a, c in zip(starts, self.crop))
        return {"image": z[(slice(None), *box)].float().clone(), "label": self.labels[index]}


__all__ = ["LATENT_FORMATS", "LatentCrops", "RunningMoments", "encode_image", "file_stamp", "latent_key", "load_latent",
           "save_latent"]
