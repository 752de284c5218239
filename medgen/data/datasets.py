"""Cached datasets and per-rank loaders over the items :mod:`medgen.io.discovery` finds."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from torch.utils.data import DistributedSampler, Sampler

from medgen.config import RunConfig
from medgen.data import cache as disk_cache
from medgen.data.transforms import cached_train_transforms, cached_val_transforms, decode, train_transforms, val_transforms
from medgen.errors import MedgenError
from medgen.io.discovery import relative_name
from medgen.io.image import ImageReadError

log = logging.getLogger("medgen.data")


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one item's random crop and augmentation in one epoch: the same whichever process or loader
    worker reads it, so a resumed epoch draws exactly what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SkipUnreadable(torch.utils.data.Dataset):
    """Wraps a dataset so that an item that fails to load mid-run is reported and replaced by the next one.

    Indexed with ``(epoch, index)`` (see :class:`EpochSampler`), it first seeds the random transforms from
    :func:`item_seed`; a plain ``index`` leaves them as they are. Failures are appended as JSON lines
    ``{"path", "reason"}`` to ``report_path`` (one file per rank).

    With ``repeats`` > 1 every item appears that many times per epoch (``patches_per_image``): index ``j`` reads
    item ``j % len(base)`` and seeds its crop from ``j``, so each repeat is a different patch.
    """

    def __init__(self, base: torch.utils.data.Dataset, items: Sequence[dict], data_base_dir: str, report_path: Path | None,
                 seed: int = 0, repeats: int = 1):
        self.base, self.items, self.data_base_dir, self.report_path, self.seed = base, items, data_base_dir, report_path, seed
        self.repeats = repeats

    def __len__(self) -> int:
        return len(self.base) * self.repeats

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = key if isinstance(key, tuple) else (None, key)
        for attempt in range(min(len(self.base), 8)):
            j = (index + attempt) % len(self)
            i = j % len(self.base)
            if epoch is not None:
                self.base.transform.set_random_state(seed=item_seed(self.seed, epoch, j))
            try:
                return self.base[i]
            except Exception as e:  # a file changed or vanished after the pre-training scan
                self._report(self.items[i]["image"], e)
        raise MedgenError(f"{min(len(self.base), 8)} consecutive items failed to load; see {self.report_path}")

    def _report(self, path: str, error: Exception) -> None:
        if self.report_path is None:
            return
        cause = error if isinstance(error, ImageReadError) else (error.__cause__ or error)
        # the reason code or the exception type: never the message, which could quote file content
        reason = cause.reason if isinstance(cause, ImageReadError) else type(cause).__name__
        line = {"path": relative_name(path, self.data_base_dir), "reason": reason}
        with open(self.report_path, "a") as f:
            f.write(json.dumps(line) + "\n")
        log.warning("skipped %s (%s): it could not be read any more; listed in %s", line["path"], reason, self.report_path)


def _cache_dir(cfg: RunConfig, patch_size: Sequence[int]) -> Path:
    # The cached content depends on these settings (in crop mode not on the patch size: patches are cut at read);
    # a change gets a fresh folder instead of stale entries.
    resized = list(patch_size) if cfg.patch_mode == "resize" else None
    key = json.dumps([disk_cache.FORMAT, list(cfg.intensity_percentiles), cfg.patch_mode, resized, cfg.cache_in_place])
    return Path(cfg.cache_dir or Path(cfg.run_dir) / "cache") / hashlib.sha1(key.encode()).hexdigest()[:12]


class DiskCachedDataset(torch.utils.data.Dataset):
    """Items read through the disk cache (:class:`medgen.data.cache.DiskImageCache`), then ``transform``
    (:func:`~medgen.data.transforms.cached_train_transforms`: crop at read, window, augmentation). Items are
    dicts like MONAI's datasets give: ``image`` (tensor), ``image_spacing`` and the item's other keys."""

    def __init__(self, items: Sequence[dict], cache: disk_cache.DiskImageCache, transform):
        self.items, self.cache, self.transform = list(items), cache, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        image = self.cache.get(item["image"])
        return self.transform({**item, "image": image, "image_spacing": torch.as_tensor(image.spacing, dtype=torch.float64)})


def build_dataset(cfg: RunConfig, items: Sequence[dict], patch_size: Sequence[int], train: bool, rank: int = 0):
    """A dataset over ``items`` with the config's caching: ``disk`` (:class:`DiskCachedDataset`: decoded values
    memory-mapped from one copy on disk shared by every rank, patches cut at read, re-decoded when a file
    changes), ``memory`` (CacheDataset, one windowed float32 copy per process, decoded once) or ``none``."""
    transform = train_transforms(cfg, patch_size) if train else val_transforms(cfg, patch_size)
    data = list(items)
    if cfg.cache == "disk":
        patch = tuple(patch_size)
        cache = disk_cache.DiskImageCache(_cache_dir(cfg, patch), functools.partial(decode, cfg=cfg, patch_size=patch),
                                          random_access=cfg.patch_mode == "crop", in_place=cfg.cache_in_place)
        cached = cached_train_transforms(cfg, patch) if train else cached_val_transforms(cfg, patch)
        ds = DiskCachedDataset(data, cache, cached)
    elif cfg.cache == "memory":
        ds = CacheDataset(data, transform=transform, num_workers=None, progress=rank == 0)
    else:
        ds = Dataset(data, transform=transform)
    report = Path(cfg.run_dir) / f"unreadable_rank{rank}.jsonl"
    return SkipUnreadable(ds, data, cfg.data_base_dir, report, seed=cfg.seed, repeats=cfg.patches_per_image if train else 1)


class EpochSampler(Sampler):
    """This rank's share of the items in one epoch, in DistributedSampler's order, as ``(epoch, index)`` pairs,
    from batch ``start`` on.

    With per-item seeds (:class:`SkipUnreadable`) every crop depends only on ``(seed, epoch, index)``, so loader
    workers can live across epochs and a run resumed at step ``start`` of an epoch sees the rest of that epoch
    exactly as an uninterrupted run would. Call :meth:`set_epoch` before iterating the loader each epoch.
    """

    def __init__(self, size: int, rank: int, world_size: int, seed: int, batch_size: int):
        self._order = DistributedSampler(range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.batch_size, self.epoch, self.start = batch_size, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch to draw, skipping its first ``start`` batches."""
        self.epoch, self.start = epoch, start

    def __iter__(self):
        self._order.set_epoch(self.epoch)
        order = list(self._order)[self.start * self.batch_size:]
        return iter([(self.epoch, i) for i in order])

    def __len__(self) -> int:
        return max(0, len(self._order) - self.start * self.batch_size)


def make_train_loader(cfg: RunConfig, dataset, batch_size: int, epoch: int, rank: int, world_size: int,
                      start: int = 0) -> DataLoader:
    """The training loader: this rank's shard, per-item seeded crops and augmentation, set to ``epoch`` from
    batch ``start``; for later epochs call ``loader.sampler.set_epoch(epoch)``. Workers persist across epochs."""
    sampler = EpochSampler(len(dataset), rank, world_size, cfg.seed, batch_size)
    sampler.set_epoch(epoch, start)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=loader_workers(cfg.num_workers),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=cfg.num_workers > 0,
        drop_last=False,
        generator=_own_generator(cfg.seed + rank),
    )


def loader_workers(requested: int) -> int:
    """``requested`` loader workers, at most one per CPU this process may run on: more only contend (and
    torch warns about them)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested > cpus:
        log.info("num_workers=%d capped at the %d CPUs this process may use", requested, cpus)
    return min(requested, cpus)


def make_val_loader(cfg: RunConfig, dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=loader_workers(min(cfg.num_workers, 2)),
                      generator=_own_generator(cfg.seed))


def _own_generator(seed: int) -> torch.Generator:
    # A loader's own generator: MONAI's DataLoader re-seeds the generator it draws from when num_workers is 0,
    # and torch's draws a worker seed from it at every iteration; with the global one, both would reset or move
    # the training's random streams (latent noise) at every validation and epoch.
    return torch.Generator().manual_seed(seed)


def shard(items: Sequence[dict], rank: int, world_size: int) -> list[dict]:
    """This rank's share of the validation items (no padding, so no image is counted twice)."""
    return list(items[rank::world_size])

