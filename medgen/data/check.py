"""Data checks: what training runs before its first step and ``medgen check-data`` prints.

:func:`scan_files` reads every item with the real reader (:func:`medgen.io.reader.read_pixels`)
and returns one :class:`FileReport` per item: usable (``status="ok"``) or not, with one reason code:

- reader reasons (``medgen.io.image.REASONS``): ``empty``, ``truncated``, ``not_dicom``,
  ``no_pixel_data``, ``unsupported_transfer_syntax``, ``undecodable``, ``unreadable``, ``multiple_series``,
  ``inconsistent_series``, ``unsupported_shape``;
- data reasons (``DATA_REASONS``): ``wrong_dimensions``, ``too_small``, ``non_finite``, ``constant``,
  ``missing``.

Items are read in a process pool and the results cached in a JSON file keyed by the relative path, size
and mtime, so a restarted run only reads new or changed files. Reports name files by their path relative
to ``data_base_dir`` and carry only non-identifying facts (shape, spacing, bit depth, modality,
photometric interpretation, transfer syntax): never names, IDs, dates, UIDs or free text from headers.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from medgen.io.discovery import item_signature, relative_name
from medgen.io.files import write_text_atomic
from medgen.io.image import REASONS, ImageReadError
from medgen.io.reader import read_pixels

__all__ = [
    "FileReport",
    "DATA_REASONS",
    "scan_files",
    "format_report",
    "report_dict",
    "write_report_json",
]

DATA_REASONS = {
    "wrong_dimensions": "the image is not of the configured spatial_dims",
    "too_small": "the image is smaller than patch_size",
    "non_finite": "the image holds NaN or Inf values",
    "constant": "every pixel has the same value",
    "missing": "the file disappeared before it could be read",
}
ALL_REASONS = {**REASONS, **DATA_REASONS}
_CACHE_VERSION = 2


@dataclass
class FileReport:
    """The check result of one image item. ``path`` is relative to ``data_base_dir`` (POSIX separators).

    ``shape``/``spacing`` are spatial (no channel axis) as :func:`read_image` returns them; the other facts
    come from :class:`medgen.io.image.ImageInfo` and are None where the format has no such notion.
    """

    path: str
    status: str  # "ok" or "bad"
    reason: str | None = None
    detail: str | None = None
    label: str | None = None
    kind: str | None = None
    shape: list[int] | None = None
    spacing: list[float] | None = None
    dtype: str | None = None
    bits_stored: int | None = None
    modality: str | None = None
    photometric_interpretation: str | None = None
    transfer_syntax: str | None = None
    files: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Reader facts copied into a FileReport (the rest of its fields are the verdict).
_FACT_FIELDS = {f.name for f in fields(FileReport)} - {"path", "status", "reason", "detail", "label"}

# --------------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------------


def _read_facts(path: str) -> dict[str, Any]:
    """Read one item and return what the checks need (cacheable: independent of spatial_dims/patch_size)."""
    p = Path(path)
    if not p.exists():
        return {"reason": "missing", "detail": "the file does not exist (moved or deleted during the scan)"}
    try:
        pixels, _, info = read_pixels(p)
    except ImageReadError as err:
        return {"reason": err.reason, "detail": err.detail}
    except Exception as err:  # a reader bug or an exotic file: report it, never crash the scan
        return {"reason": "unreadable", "detail": f"unexpected {type(err).__name__} while reading the file"}
    facts = info.as_dict()
    values = pixels.values
    if values.dtype.kind in "uib" and pixels.slope != 0:
        # stored integers under a one-to-one map: finite, and constant exactly when the stored values are (no
        # float copy of the image: half the time of a 2048x2048 radiograph's check)
        facts["non_finite"] = False
        facts["constant"] = bool(values.size > 0 and values.min() == values.max())
        return facts
    array = pixels.presentation()
    finite = bool(np.isfinite(array).all())
    facts["non_finite"] = not finite
    facts["constant"] = bool(finite and array.size > 0 and array.min() == array.max())
    return facts


def _judge(
    facts: Mapping[str, Any], rel: str, label: str | None, spatial_dims: int | None, patch_size: Sequence[int] | None
) -> FileReport:
    facts_fields = {k: v for k, v in facts.items() if k in _FACT_FIELDS}
    report = FileReport(path=rel, status="ok", label=label, **facts_fields)
    shape = facts.get("shape")
    if facts.get("reason"):
        report.reason, report.detail = facts["reason"], facts["detail"]
    elif spatial_dims is not None and len(shape) != spatial_dims:
        report.reason = "wrong_dimensions"
        report.detail = f"{len(shape)}D image ({_fmt_shape(shape)}) but spatial_dims={spatial_dims}"
    elif (
        patch_size is not None
        and len(patch_size) == len(shape)
        and any(s < p for s, p in zip(shape, patch_size, strict=True))
    ):
        report.reason = "too_small"
        report.detail = f"image {_fmt_shape(shape)} is smaller than patch_size {_fmt_shape(patch_size)}"
    elif facts.get("non_finite"):
        report.reason, report.detail = "non_finite", "the image holds NaN or Inf values"
    elif facts.get("constant"):
        report.reason, report.detail = "constant", "every pixel has the same value (blank image)"
    if report.reason:
        report.status = "bad"
    return report


def _item_path_label(item: Any, base: Path) -> tuple[Path, str | None]:
    if isinstance(item, Mapping):
        path = Path(item["image"])
        label = item.get("label")
    else:
        path, label = Path(item), None
    if label is None:  # data_base_dir/{edente,dente}/...: the first folder is the class
        parts = Path(relative_name(path, base)).parts
        label = parts[0] if len(parts) > 1 and parts[0] != ".." else None
    return path, label


def _load_cache(cache_path: Path | None) -> dict[str, Any]:
    if cache_path is None or not cache_path.is_file():
        return {}
    try:
        data = json.loads(cache_path.read_text())
        return data["entries"] if data.get("version") == _CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # a damaged cache only costs a rescan


def _save_cache(cache_path: Path, entries: Mapping[str, Any]) -> None:
    # atomic: ranks or restarts never see half a file
    write_text_atomic(cache_path, json.dumps({"version": _CACHE_VERSION, "entries": entries}))


def _pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    # fork: workers need no re-import (importing medgen.data may pull in torch); they only use numpy/pydicom.
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def scan_files(
    items: Iterable[Any],
    data_base_dir: str | os.PathLike,
    spatial_dims: int | None,
    patch_size: Sequence[int] | None,
    workers: int = 2,
    cache_path: str | os.PathLike | None = None,
    progress: bool = False,
) -> list[FileReport]:
    """Read every item with the real reader and say whether training can use it.

    Args:
        items: paths (files or DICOM series folders, e.g. from :func:`find_images`) or dicts with
            ``"image"`` (path) and optional ``"label"`` (class; default: the first folder below
            ``data_base_dir``).
        data_base_dir: reports name items relative to this folder.
        spatial_dims: 2 or 3; items of another dimensionality are ``wrong_dimensions`` (None: not checked).
        patch_size: items smaller than this along any axis are ``too_small`` (None: not checked).
        workers: processes reading files in parallel; 0 reads in this process.
        cache_path: JSON file remembering results by relative path, size and mtime (None: no cache).
        progress: show a tqdm progress bar on stderr.

    Returns:
        one :class:`FileReport` per item, in the order of ``items``.
    """
    base = Path(data_base_dir)
    cache_file = Path(cache_path) if cache_path is not None else None
    cache = _load_cache(cache_file)
    entries: list[tuple[Path, str, str | None, str | None]] = []
    for item in items:
        path, label = _item_path_label(item, base)
        entries.append((path, relative_name(path, base), label, item_signature(path)))

    facts: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for i, (_, rel, _, sig) in enumerate(entries):
        hit = cache.get(rel)
        if sig is not None and hit is not None and hit.get("signature") == sig:
            facts[i] = hit["facts"]
        else:
            todo.append(i)

    paths = [str(entries[i][0]) for i in todo]
    if todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="check-data", unit="item", disable=not progress, file=sys.stderr)
        if workers and workers > 0 and len(todo) > 1:
            with _pool(workers) as pool:
                chunk = max(1, min(16, len(todo) // (workers * 4)))
                for i, result in zip(todo, pool.map(_read_facts, paths, chunksize=chunk), strict=True):
                    facts[i] = result
                    bar.update()
        else:
            for i, path in zip(todo, paths, strict=True):
                facts[i] = _read_facts(path)
                bar.update()
        bar.close()

    if cache_file is not None and todo:
        # Merge, so that scans of different item sets (train, val) can share one cache file.
        for i in todo:
            _, rel, _, sig = entries[i]
            if sig is not None and facts[i].get("reason") != "missing":
                cache[rel] = {"signature": sig, "facts": facts[i]}
        _save_cache(cache_file, cache)

    return [_judge(facts[i], rel, label, spatial_dims, patch_size) for i, (_, rel, label, _) in enumerate(entries)]


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _fmt_counter(counter: Counter, limit: int = 6) -> str:
    if not counter:
        return "-"
    common = counter.most_common()
    text = ", ".join(f"{value} ({n})" for value, n in common[:limit])
    return text + (f", +{len(common) - limit} more" if len(common) > limit else "")


def report_dict(reports: Sequence[FileReport], settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report: ``{"files": [...], "counts": {...}, "settings": {...}}``."""
    by_class: dict[str, dict[str, int]] = {}
    for r in reports:
        c = by_class.setdefault(r.label or ".", {"ok": 0, "bad": 0})
        c[r.status] += 1
    return {
        "files": [r.as_dict() for r in reports],
        "counts": {
            "total": len(reports),
            "ok": sum(r.ok for r in reports),
            "bad": sum(not r.ok for r in reports),
            "by_reason": dict(Counter(r.reason for r in reports if not r.ok)),
            "by_class": by_class,
        },
        "settings": dict(settings or {}),
    }


def write_report_json(
    reports: Sequence[FileReport], path: str | os.PathLike, settings: Mapping[str, Any] | None = None
) -> Path:
    """Write :func:`report_dict` to ``path`` (parents created)."""
    return write_text_atomic(path, json.dumps(report_dict(reports, settings), indent=2) + "\n")


def format_report(reports: Sequence[FileReport]) -> str:
    """A human summary: per class the usable items and their shapes, bit depths, modalities, photometric
    interpretations and transfer syntaxes; then every unusable item with its reason."""
    lines: list[str] = []
    labels = sorted({r.label or "." for r in reports})
    for label in labels:
        group = [r for r in reports if (r.label or ".") == label]
        good = [r for r in group if r.ok]
        lines.append(f"{label}: {len(good)} usable, {len(group) - len(good)} unusable (of {len(group)})")
        rows = [
            ("shapes", Counter(_fmt_shape(r.shape) for r in good if r.shape)),
            ("bit depths", Counter(str(r.bits_stored) if r.bits_stored else (r.dtype or "?") for r in good)),
            ("kinds", Counter(r.kind or "?" for r in good)),
            ("modalities", Counter(r.modality for r in good if r.modality)),
            ("photometric", Counter(r.photometric_interpretation for r in good if r.photometric_interpretation)),
            ("transfer syntaxes", Counter(r.transfer_syntax for r in good if r.transfer_syntax)),
        ]
        for name, counter in rows:
            lines.append(f"  {name:<18} {_fmt_counter(counter)}")
    bad = [r for r in reports if not r.ok]
    if bad:
        lines.append("")
        lines.append(f"Unusable ({len(bad)}):")
        width = min(60, max(len(r.path) for r in bad))
        for r in bad:
            lines.append(f"  {r.path:<{width}}  {r.reason:<28} {r.detail}")
        reasons = Counter(r.reason for r in bad)
        lines.append("")
        lines.append("Reasons: " + ", ".join(f"{k} ({n}): {ALL_REASONS.get(k, k)}" for k, n in reasons.most_common()))
    else:
        lines.append("")
        lines.append(f"All {len(reports)} items are usable.")
    return "\n".join(lines)
