"""The launcher's data step, shared by every trainer: find the items, scan them once on rank 0, stop or skip bad files."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

from medgen.config import RunConfig
from medgen.data.check import format_report, scan_files, write_report_json
from medgen.errors import MedgenError
from medgen.io.discovery import discover_items
from medgen.training.distributed import DistInfo, broadcast_object

log = logging.getLogger("medgen.train")


class DataCheckError(MedgenError):
    """Some training or validation files are unusable and ``skip_bad_files`` is false."""


def training_items(cfg: RunConfig, checked_size: Sequence[int] | None, dist_info: DistInfo,
                   found: tuple[list[dict], list[dict]] | None = None) -> tuple[list[dict], list[dict]]:
    """The training and validation items of ``cfg`` (``found``, or :func:`medgen.io.discovery.discover_items`),
    checked: every item is read with the real reader before the first step (rank 0, in parallel, cached by the
    item's change stamp in ``run_dir``), each at least ``checked_size`` (None: any size); stop with the report
    when a file is bad, or drop bad files when ``skip_bad_files`` is true and list them in
    ``run_dir/skipped_files.json``."""
    train, val = found or discover_items(cfg)
    items = [*train, *val]
    if dist_info.is_main:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        reports = scan_files(
            items, cfg.data_base_dir, cfg.spatial_dims, checked_size,
            workers=cfg.scan_workers, cache_path=Path(cfg.run_dir) / "data_check_cache.json", progress=sys.stderr.isatty(),
        )
        bad_paths = [it["image"] for it, r in zip(items, reports) if not r.ok]
        bad_reports = [r for r in reports if not r.ok]
        if bad_reports and cfg.skip_bad_files:
            write_report_json(bad_reports, Path(cfg.run_dir) / "skipped_files.json")
            log.warning("skipping %d unusable files (skip_bad_files=true); list in %s",
                        len(bad_reports), Path(cfg.run_dir) / "skipped_files.json")
        outcome = (bad_paths, format_report(reports) if bad_reports else "")
    else:
        outcome = None
    bad_paths, report = broadcast_object(outcome)
    if bad_paths and not cfg.skip_bad_files:
        raise DataCheckError(
            f"{len(bad_paths)} of {len(items)} files in {cfg.data_base_dir} are unusable; fix or remove them, "
            f"or set skip_bad_files=true to train on the rest:\n{report}"
        )
    bad = set(bad_paths)
    train = [it for it in train if it["image"] not in bad]
    val = [it for it in val if it["image"] not in bad]
    if not train:
        raise DataCheckError(f"no usable training images remain in {cfg.data_base_dir}")
    return train, val
