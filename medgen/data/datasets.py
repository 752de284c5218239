"""Cached datasets and per-rank loaders over the items :mod:`medgen.io.discovery` finds."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from torch.utils.data import DistributedSampler

from medgen.config import RunConfig
from medgen.data.transforms import train_transforms, val_transforms
from medgen.errors import MedgenError
from medgen.io.discovery import item_signature, relative_name
from medgen.io.reader import ImageReadError

log = logging.getLogger("medgen.data")


class SkipUnreadable(torch.utils.data.Dataset):
    """Wraps a dataset so that an item that fails to load mid-run is reported and replaced by the next one.

    Failures are appended as JSON lines ``{"path", "reason"}`` to ``report_path`` (one file per rank).
    """

    def __init__(self, base: torch.utils.data.Dataset, items: Sequence[dict], data_base_dir: str, report_path: Path | None):
        self.base, self.items, self.data_base_dir, self.report_path = base, items, data_base_dir, report_path

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        for attempt in range(min(len(self.base), 8)):
            i = (index + attempt) % len(self.base)
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
    # The cached content depends on these settings: a change gets a fresh folder instead of stale tensors.
    key = json.dumps([cfg.spatial_dims, list(cfg.intensity_percentiles), cfg.patch_mode, list(patch_size), 2])
    return Path(cfg.cache_dir or Path(cfg.run_dir) / "cache") / hashlib.sha1(key.encode()).hexdigest()[:12]


class StampedPersistentDataset(PersistentDataset):
    """MONAI's ``PersistentDataset`` whose cache key includes the item's change stamp
    (:func:`medgen.io.discovery.item_signature`: size and mtime of the file, or of every file of a series),
    taken each time the item is read: a file or one slice of a series edited during a run is decoded again
    at its next read, and the old entry is never served."""

    def _cachecheck(self, item_transformed):
        stamp = item_signature(item_transformed["image"]) or "missing"
        return super()._cachecheck({**item_transformed, "stamp": stamp})


def build_dataset(cfg: RunConfig, items: Sequence[dict], patch_size: Sequence[int], train: bool, rank: int = 0):
    """A dataset over ``items`` with the config's caching: ``disk`` (:class:`StampedPersistentDataset`, one copy
    on disk shared by every rank, re-decoded when a file changes), ``memory`` (CacheDataset, one copy per
    process, decoded once) or ``none``."""
    transform = train_transforms(cfg, patch_size) if train else val_transforms(cfg, patch_size)
    data = list(items)
    if cfg.cache == "disk":
        cache = _cache_dir(cfg, patch_size)
        cache.mkdir(parents=True, exist_ok=True)
        ds = StampedPersistentDataset(data, transform=transform, cache_dir=cache)
    elif cfg.cache == "memory":
        ds = CacheDataset(data, transform=transform, num_workers=None, progress=rank == 0)
    else:
        ds = Dataset(data, transform=transform)
    report = Path(cfg.run_dir) / f"unreadable_rank{rank}.jsonl"
    return SkipUnreadable(ds, data, cfg.data_base_dir, report)


def seed_for(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's data randomness in one epoch (crops, augmentation, worker seeds)."""
    return (seed * 1_000_003 + epoch * 10_007 + rank) % (2**63)


def make_train_loader(cfg: RunConfig, dataset, batch_size: int, epoch: int, rank: int, world_size: int) -> DataLoader:
    """The training loader for one epoch: this rank's shard (DistributedSampler) with epoch-seeded randomness.

    Built per epoch so that crops and augmentation depend only on (seed, epoch, rank): a resumed run
    draws exactly what an uninterrupted one would.
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed)
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed_for(cfg.seed, epoch, rank))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        drop_last=False,
    )


def make_val_loader(cfg: RunConfig, dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=min(cfg.num_workers, 2))


def shard(items: Sequence[dict], rank: int, world_size: int) -> list[dict]:
    """This rank's share of the validation items (no padding, so no image is counted twice)."""
    return list(items[rank::world_size])

