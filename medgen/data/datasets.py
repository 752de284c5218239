"""Data discovery (edente/ dente/), the reproducible split, cached datasets and per-rank loaders."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Sequence

import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from torch.utils.data import DistributedSampler

from medgen.config import ConfigError
from medgen.config.vae import RunConfig
from medgen.data.transforms import train_transforms, val_transforms

log = logging.getLogger("medgen.data")


def _items_in(folder: Path, label: str) -> list[dict]:
    from medgen.data.reader import find_images

    return [{"image": str(p), "label": label} for p in sorted(find_images(folder))]


def discover_items(cfg: RunConfig) -> tuple[list[dict], list[dict]]:
    """Training and validation items ``{"image": path, "label": class}`` for ``data_source``.

    Validation comes from ``val_dir`` when set (its edente/ dente/ subfolders, or the folder itself),
    otherwise a ``1 - train_split`` share of each class, drawn reproducibly from ``seed``.
    """
    base = Path(cfg.data_base_dir)
    if not base.is_dir():
        raise ConfigError(
            f"data_base_dir={cfg.data_base_dir} is not a folder; point it at a folder with edente/ and dente/, "
            f"or create a demo set with `medgen demo-data {cfg.data_base_dir}`"
        )
    train, val = [], []
    for label in cfg.classes:
        folder = base / label
        items = _items_in(folder, label) if folder.is_dir() else []
        if not items:
            raise ConfigError(
                f"no images found in {folder} (data_source={cfg.data_source!r}); put DICOM/NIfTI/PNG files there, "
                f"or create a demo set with `medgen demo-data {cfg.data_base_dir}`"
            )
        if cfg.val_dir is None:
            random.Random(f"{cfg.seed}-{label}").shuffle(items)
            n_val = max(1, round(len(items) * (1 - cfg.train_split))) if len(items) > 1 else 0
            val += items[:n_val]
            items = items[n_val:]
        train += items
    if cfg.val_dir is not None:
        vdir = Path(cfg.val_dir)
        subdirs = [vdir / c for c in cfg.classes if (vdir / c).is_dir()]
        val = [it for d in subdirs for it in _items_in(d, d.name)] if subdirs else _items_in(vdir, "val")
        if not val:
            raise ConfigError(f"val_dir={cfg.val_dir} holds no images")
    return train, val


def relative_name(path: str | Path, base: str | Path) -> str:
    """A file's name relative to ``base`` for reports and logs (never header values)."""
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return Path(path).name


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
        raise RuntimeError(f"{min(len(self.base), 8)} consecutive items failed to load; see {self.report_path}")

    def _report(self, path: str, error: Exception) -> None:
        if self.report_path is None:
            return
        from medgen.data.reader import ImageReadError

        cause = error if isinstance(error, ImageReadError) else (error.__cause__ or error)
        # the reason code or the exception type: never the message, which could quote file content
        reason = cause.reason if isinstance(cause, ImageReadError) else type(cause).__name__
        line = {"path": relative_name(path, self.data_base_dir), "reason": reason}
        with open(self.report_path, "a") as f:
            f.write(json.dumps(line) + "\n")
        log.warning("skipped %s (%s): it could not be read any more; listed in %s", line["path"], reason, self.report_path)


def _cache_dir(cfg: RunConfig, patch_size: Sequence[int]) -> Path:
    # The cached content depends on these settings: a change gets a fresh folder instead of stale tensors.
    key = json.dumps([cfg.spatial_dims, list(cfg.intensity_percentiles), cfg.patch_mode, list(patch_size), 1])
    return Path(cfg.cache_dir or Path(cfg.run_dir) / "cache") / hashlib.sha1(key.encode()).hexdigest()[:12]


def _with_stat(items: Sequence[dict]) -> list[dict]:
    # size and mtime are part of the cache key, so an edited file is decoded again
    out = []
    for it in items:
        p = Path(it["image"])
        st = p.stat() if p.exists() else None
        stamp = f"{st.st_size}-{st.st_mtime_ns}" if st else "missing"
        out.append({**it, "stamp": stamp})
    return out


def build_dataset(cfg: RunConfig, items: Sequence[dict], patch_size: Sequence[int], train: bool, rank: int = 0):
    """A dataset over ``items`` with the config's caching: ``disk`` (PersistentDataset, one copy on disk
    shared by every rank), ``memory`` (CacheDataset, one copy per process) or ``none``."""
    transform = train_transforms(cfg, patch_size) if train else val_transforms(cfg, patch_size)
    data = _with_stat(items)
    if cfg.cache == "disk":
        cache = _cache_dir(cfg, patch_size)
        cache.mkdir(parents=True, exist_ok=True)
        ds = PersistentDataset(data, transform=transform, cache_dir=cache)
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

