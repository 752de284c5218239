"""Data-loading throughput: bare pydicom against medgen's training loader, on the same DICOM files.

Two contenders read the same files in one run:

- **bare pydicom**, the lower bound of work: ``pydicom.dcmread(path).pixel_array`` for every file, in a
  plain loop in this process (no modality LUT, no MONOCHROME1 inversion, no windowing, no batching).
- **medgen**, exactly as training uses it: ``build_dataset(cfg, items, patch_size, train=True)`` and one
  ``make_train_loader(cfg, dataset, batch_size, 0, rank=0, world_size=1)`` whose workers persist across
  epochs (``loader.sampler.set_epoch(epoch)``), with the config's ``num_workers``, ``cache="disk"`` in a fresh
  temporary ``cache_dir`` and the config's transforms (``cache_in_place`` as the config says: true by
  default). The first epoch decodes every file (read, window from the value counts) and writes the cache; the
  later ones cut each patch out of the memory-mapped cache entry, or read its rows from the item's own file
  (uncompressed 2D DICOM read in place), and window only the patch. The first-epoch time includes
  ``build_dataset`` and starting the workers, since training pays both. ``--set KEY=VALUE`` changes the config
  (e.g. ``--set cache_in_place=false`` to measure the copying cache on 2D files).

Besides images/s it reports, per patch of a cached epoch:

- ``patch_mb``: the patch at the cache's stored width (e.g. 128^3 int16 = 4.2 MB), what crop-at-read copies
  out of the memory map;
- ``read_mb_cold``: the bytes actually read from disk (``read_bytes`` of ``/proc/self/io``) in one more cached
  epoch run in this process after the cache files, and the source files read in place, were dropped from the
  page cache (``posix_fadvise DONTNEED``): the cost when the data do not fit in RAM. Copied entries store their
  values in page-aligned chunks of 4096 values (64x64 uint16 = 8 KiB in 2D, 16^3 int16 in 3D) and a patch reads
  the chunks it touches: about ((256 + 64) / 256)^2 = 1.56x the bytes of a 256^2 patch, ((128 + 16) / 128)^3 =
  1.42x of a 128^3 one, on average over crop positions. A 2D file read in place gives a patch the whole rows it
  spans, one contiguous read (a 256^2 patch of a 2048^2 uint16 image: 256 rows of 4 KiB, 8x the patch in one
  sequential 1 MB read, against 25 scattered 8 KiB chunks).

and ``cache_ratio``: the pixel data in the cache over the decoded source data (stored samples at
BitsAllocated; 0 for entries read in place); each copied entry adds a 4 KiB .npy header (the values start on a
page), each entry a JSON trailer of a few hundred bytes (``cache_bytes``).
``first_epoch_ms_per_item`` splits a first epoch's work on 16 items, each part a loop in this process: bare
pydicom, medgen's decode (read, window) and the cache write (the trailer of an entry read in place; a copy into
chunks, then to the file, which training does on a thread beside the decoding, so at the end of the first epoch
each worker may still be writing its last entry or two; they are finished during the next epoch).

Rounds alternate between the two contenders (bare pass, then medgen's K epochs from an empty cache) so that
load from other processes hits both alike; the first round is a warm-up (imports, page cache) and is
dropped, and medians over the other rounds are reported. The machine's load average is written with the
results: on a shared machine, compare the ratios, not the absolute images/s.

Default file set (no network: only files shipped inside the pydicom wheel, located with
``pydicom.data.get_testdata_file``): the uncompressed, single-frame, grayscale images of the largest sizes
pydicom ships, plus the CR radiographs:

===============================  ====  ===========  ====  ===========  =================================
file                             mod.  rows x cols  bits  photometric  why
===============================  ====  ===========  ====  ===========  =================================
examples_overlay.dcm             MR    300 x 484    12    MONOCHROME2  largest uncompressed gray image
CT_small.dcm                     CT    128 x 128    16s   MONOCHROME2  signed, RescaleIntercept -1024
MR_small.dcm                     MR    64 x 64      16s   MONOCHROME2  signed MR slice
dicomdirtests/77654033/CR1/6154  CR    16 x 16      12    MONOCHROME1  radiograph: inverted, rescaled
dicomdirtests/77654033/CR2/6247  CR    16 x 16      12    MONOCHROME1  radiograph: inverted, rescaled
dicomdirtests/77654033/CR3/6278  CR    16 x 16      12    MONOCHROME1  radiograph: inverted, rescaled
===============================  ====  ===========  ====  ===========  =================================

pydicom ships no uncompressed grayscale image near the size of a real radiograph (the CR files are stored
downsampled to 16 x 16), so these are the most realistic ones available offline. Each is copied ``--copies``
times (default 24, so 144 items) into a temporary ``edente/`` + ``dente/`` tree, alternating between the
classes; every copy gets its own SeriesInstanceUID/SOPInstanceUID (pixels and all other elements unchanged)
so that, as with real 2D data, each file is its own image and not a slice of a volume for
``find_images``. The default patch is 64 x 64, so that the MR/CT images are cropped as real radiographs are
by 256 x 256 patches (the CR files are padded up to it); ``--patch-size 256 256`` pads all but one source.

For realistic sizes, benchmark a folder of your own (``--data DIR``: ``DIR/edente`` and/or ``DIR/dente``,
or images directly in ``DIR``) or a synthetic one. The folder should hold only usable images (``medgen
check-data DIR`` first): the bare loop stops on the first file pydicom cannot read. Series folders (3D) count as
one item; pass three ``--patch-size`` values. The recorded cases, radiograph-sized 2D and CBCT-like 3D:

    medgen demo-data /tmp/d2 --size 2048 --count 32                    # 64 x 2048^2 uint16 DICOM
    python benchmarks/bench_data.py --data /tmp/d2 --workers 2 --epochs 3 --patch-size 256 256 --batch 8 \
        --json benchmarks/results/data_cpu.json
    medgen demo-data /tmp/d3 --spatial-dims 3 --size 256 --count 8     # 16 x 256^3 int16 series
    python benchmarks/bench_data.py --data /tmp/d3 --workers 2 --epochs 3 --patch-size 128 128 128 --batch 2 \
        --json benchmarks/results/data_3d_cpu.json

Targets, 2D: ``first_epoch_ratio = medgen_first / bare >= 0.5``, ``cached_ratio = medgen_cached / bare >= 2``;
3D: ``cached_speedup = medgen_cached / medgen_first >= 5``, ``read_ratio = read_mb_cold / patch_mb <= 2``;
both: ``cache_ratio <= 1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medgen.config import load_config
from medgen.data.cache import DiskImageCache, read_layout
from medgen.data.datasets import build_dataset, make_train_loader
from medgen.data.transforms import decode
from medgen.io.discovery import item_signature
from medgen.io.discovery import find_images

ROOT = Path(__file__).resolve().parents[1]
# Shipped with the pydicom wheel (see the module docstring): get_testdata_file finds them without a download.
DEFAULT_FILES = (
    "examples_overlay.dcm",
    "CT_small.dcm",
    "MR_small.dcm",
    "dicomdirtests/77654033/CR1/6154",
    "dicomdirtests/77654033/CR2/6247",
    "dicomdirtests/77654033/CR3/6278",
)
CLASSES = ("edente", "dente")
# (ratio, at least or at most, value) per case
TARGETS = {
    2: {"first_epoch_ratio": (">=", 0.5), "cached_ratio": (">=", 2.0), "cache_ratio": ("<=", 1.0)},
    3: {"cached_speedup": (">=", 5.0), "read_ratio": ("<=", 2.0), "cache_ratio": ("<=", 1.0)},
}


def build_default_set(out: Path, copies: int) -> list[dict]:
    """Copy each of ``DEFAULT_FILES`` ``copies`` times into ``out/{edente,dente}/`` with fresh UIDs.

    Returns:
        one description per source file: name, modality, shape, bits stored, photometric interpretation.
    """
    for c in CLASSES:
        (out / c).mkdir(parents=True, exist_ok=True)
    sources, k = [], 0
    for name in DEFAULT_FILES:
        path = get_testdata_file(name)
        if path is None:
            raise FileNotFoundError(f"pydicom test file {name!r} not found; reinstall pydicom (pip install -U pydicom)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
        sources.append({
            "file": name, "modality": str(ds.get("Modality", "")), "shape": [int(ds.Rows), int(ds.Columns)],
            "bits_stored": int(ds.BitsStored), "photometric": str(ds.PhotometricInterpretation),
            "transfer_syntax": ds.file_meta.TransferSyntaxUID.name,
        })
        for i in range(copies):
            # One series per copy: same-series same-size CT/MR files in one folder would be read as a volume.
            # Seeded UIDs keep the set identical from run to run.
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[name, str(i), "series"])
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[name, str(i), "sop"])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(out / CLASSES[k % 2] / f"{k:04d}.dcm")
            k += 1
    return sources


def find_items(base: Path) -> list[dict]:
    """Training items of ``base`` as discovery makes them: its class folders, else the images directly in it."""
    folders = [(base / c, c) for c in CLASSES if (base / c).is_dir()] or [(base, "data")]
    items = [{"image": str(p), "label": label} for folder, label in folders for p in find_images(folder)]
    if not items:
        raise SystemExit(f"no images found under {base}; point --data at a folder of DICOM files")
    return items


def dicom_files(item: str) -> list[str]:
    """The DICOM files of one item: the file itself, or every file of a series folder."""
    p = Path(item)
    return sorted(str(f) for f in p.iterdir() if f.is_file()) if p.is_dir() else [item]


def decoded_bytes(files_per_item: list[list[str]]) -> int:
    """The size of the decoded source data: every file's samples at BitsAllocated."""
    total = 0
    for files in files_per_item:
        for f in files:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            samples = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.get("SamplesPerPixel", 1))
            total += samples * int(ds.BitsAllocated) // 8
    return total


def bare_pass(files_per_item: list[list[str]]) -> float:
    """Seconds to dcmread + pixel_array every file, in this process."""
    start = time.perf_counter()
    for files in files_per_item:
        for f in files:
            _ = pydicom.dcmread(f).pixel_array  # the property decodes the pixel data
    return time.perf_counter() - start


def medgen_pass(cfg, items: list[dict], patch: tuple[int, ...], epochs: int, batch_size: int) -> tuple[list[float], int]:
    """Seconds per epoch of medgen's training loader over ``items`` from an empty disk cache.

    Returns:
        (seconds of each epoch, images per epoch).
    """
    times, n = [], 0
    start = time.perf_counter()
    dataset = build_dataset(cfg, items, patch, train=True)
    loader = make_train_loader(cfg, dataset, batch_size, 0, rank=0, world_size=1)  # one loader, as training
    for epoch in range(epochs):
        n = 0
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            n += batch["image"].shape[0]
            if tuple(batch["image"].shape[2:]) != patch:
                raise RuntimeError(f"medgen's loader gave a batch of shape {tuple(batch['image'].shape)}, not patches of {patch}")
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return times, n


def _read_bytes() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def first_epoch_parts(cfg, items: list[dict], files_per_item: list[list[str]], patch: tuple[int, ...], folder: Path,
                      n: int = 16) -> dict:
    """Milliseconds per item, in this process, of what a first epoch does with an image: ``bare`` (pydicom
    alone, as its pass: one file after another), ``decode`` (read, window) and ``write`` (its cache entry, into a
    fresh folder), timed one after the other for each of the first ``n`` items (each image freed before the next,
    as a loader worker does)."""
    cache = DiskImageCache(folder, lambda path: decode(path, cfg, patch), in_place=cfg.cache_in_place)
    chosen = list(zip(items, files_per_item))[:n]
    t0 = time.perf_counter()
    bare_pass([files for _, files in chosen])
    parts = {"bare": time.perf_counter() - t0, "decode": 0.0, "write": 0.0}
    for item, _ in chosen:
        t0 = time.perf_counter()
        image = decode(item["image"], cfg, patch)
        t1 = time.perf_counter()
        cache.put(item["image"], image, item_signature(item["image"]))
        parts["decode"] += t1 - t0
        parts["write"] += time.perf_counter() - t1
        del image
    shutil.rmtree(folder, ignore_errors=True)
    return {k: 1e3 * v / len(chosen) for k, v in parts.items()}


def _drop_from_page_cache(paths) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages (entries just written) would stay in the page cache
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cache_figures(cfg, items: list[dict], files_per_item: list[list[str]], patch: tuple[int, ...],
                  batch_size: int) -> dict:
    """Size, stored types and bytes per patch of the filled cache in ``cfg.cache_dir`` (see the module docstring).

    ``read_mb_cold`` comes from one more cached epoch in this process (no workers, so /proc/self/io counts its
    reads) after every cache file, and every source file read in place, was dropped from the page cache; None
    where that cannot be measured. The source files are read once more afterwards (warm again).
    """
    entries = sorted(Path(cfg.cache_dir).rglob("*.npy"))
    layouts = []
    for e in entries:
        with open(e, "rb") as f:
            layouts.append(read_layout(f))
    patch_bytes = [np.prod([min(p, s) for p, s in zip(patch, x.shape)]) * x.dtype.itemsize for x in layouts]
    pixel_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in layouts if x.in_file is None)
    dtypes = sorted({str(x.dtype) for x in layouts})
    in_place = sum(x.in_file is not None for x in layouts)
    sources = [f for files in files_per_item for f in files]
    _drop_from_page_cache(entries + (sources if in_place else []))
    serial = dataclasses.replace(cfg, num_workers=0)
    dataset = build_dataset(serial, items, patch, train=True)
    before = _read_bytes()
    for _ in make_train_loader(serial, dataset, batch_size, 1, rank=0, world_size=1):
        pass
    after = _read_bytes()
    bare_pass(files_per_item)
    return {
        "cache_bytes": sum(e.stat().st_size for e in entries),
        "cache_pixel_bytes": pixel_bytes,
        "cache_entries_in_place": in_place,
        "cache_dtypes": dtypes,
        "patch_mb": float(np.mean(patch_bytes)) / 1e6,
        "read_mb_cold": None if before is None or after is None else (after - before) / len(items) / 1e6,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="folder to benchmark (default: pydicom's test files, see above)")
    p.add_argument("--copies", type=int, default=24, help="copies of each default file (default 24: 144 items)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: vae_config.json's num_workers)")
    p.add_argument("--epochs", type=int, default=4, help="medgen epochs per round: the first plus K-1 cached (>= 2)")
    p.add_argument("--patch-size", type=int, nargs="+", default=[64, 64], help="2 values (2D) or 3 (3D); default 64 64")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: vae_config.json's)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round (default 5)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as medgen's --set (e.g. cache_in_place=false); repeatable")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (one first epoch and at least one cached epoch)")
    patch = tuple(args.patch_size)
    if len(patch) not in (2, 3):
        p.error("--patch-size takes 2 values (2D images) or 3 (volumes)")
    warnings.simplefilter("ignore")  # pydicom's notes about vendor quirks would flood the output

    tmp = Path(tempfile.mkdtemp(prefix="medgen_bench_data_"))
    try:
        sources = None
        if args.data is None:
            base = tmp / "data"
            sources = build_default_set(base, args.copies)
        else:
            base = args.data
        items = find_items(base)
        files_per_item = [dicom_files(it["image"]) for it in items]
        n_bytes = sum(os.path.getsize(f) for files in files_per_item for f in files)
        source_bytes = decoded_bytes(files_per_item)
        overrides = [
            f"data_base_dir={base}", f"run_dir={tmp / 'run'}", "cache=disk", "data_source=both",
            f"spatial_dims={len(patch)}", f"autoencoder_def.spatial_dims={len(patch)}",
            f"autoencoder_train.patch_size={list(patch)}",
        ]
        if args.workers is not None:
            overrides.append(f"num_workers={args.workers}")
        if args.batch is not None:
            overrides.append(f"autoencoder_train.batch_size={args.batch}")
        overrides += args.overrides
        cfg = load_config(ROOT / "vae_config.json", overrides)
        batch_size = cfg.autoencoder_train.batch_size

        load_before = os.getloadavg()
        bare_s, first_s, cached_s, figures = [], [], [], {}
        for r in range(args.rounds + 1):  # round 0 warms up imports and the page cache
            b = bare_pass(files_per_item)
            cfg.cache_dir = str(tmp / f"cache{r}")  # empty: the first epoch decodes and fills it
            epochs, n = medgen_pass(cfg, items, patch, args.epochs, batch_size)
            if n != len(items):
                raise RuntimeError(f"medgen's loader gave {n} images per epoch for {len(items)} items")
            if r == args.rounds:  # after the timed rounds: this pass evicts the cache from the page cache
                figures = cache_figures(cfg, items, files_per_item, patch, batch_size)
                figures["first_epoch_ms_per_item"] = first_epoch_parts(cfg, items, files_per_item, patch, tmp / "parts")
            shutil.rmtree(cfg.cache_dir, ignore_errors=True)
            if r:
                bare_s.append(b)
                first_s.append(epochs[0])
                cached_s.append(statistics.mean(epochs[1:]))
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = len(items)
    bare = n / statistics.median(bare_s)
    first = n / statistics.median(first_s)
    cached = n / statistics.median(cached_s)
    ratios = {
        "first_epoch_ratio": first / bare,
        "cached_ratio": cached / bare,
        "cached_speedup": cached / first,
        "read_ratio": None if figures["read_mb_cold"] is None else figures["read_mb_cold"] / figures["patch_mb"],
        "cache_ratio": figures["cache_pixel_bytes"] / source_bytes,
    }
    targets = TARGETS[len(patch)]
    met = {k: ratios[k] is not None and (ratios[k] >= v if op == ">=" else ratios[k] <= v) for k, (op, v) in targets.items()}
    result = {
        "benchmark": "data_loading",
        "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15_before": [round(x, 2) for x in load_before],
        "load_avg_1_5_15_after": [round(x, 2) for x in load_after],
        "torch": torch.__version__,
        "pydicom": pydicom.__version__,
        "data": "pydicom test files" if args.data is None else str(args.data),
        "sources": sources,
        "copies": args.copies if args.data is None else None,
        "items": n,
        "files": sum(len(f) for f in files_per_item),
        "bytes": n_bytes,
        "decoded_source_bytes": source_bytes,
        "patch_size": list(patch),
        "patch_mode": cfg.patch_mode,
        "augment": cfg.augment,
        "cache_in_place": cfg.cache_in_place,
        "overrides": args.overrides,
        "num_workers": cfg.num_workers,
        "batch_size": batch_size,
        "epochs_per_round": args.epochs,
        "rounds": args.rounds,
        "bare_imgs_per_s": bare,
        "medgen_first_epoch_imgs_per_s": first,
        "medgen_cached_epoch_imgs_per_s": cached,
        **figures,
        **ratios,
        "targets": {k: f"{op} {v}" for k, (op, v) in targets.items()},
        "targets_met": met,
        "seconds_per_round": {"bare": bare_s, "medgen_first": first_s, "medgen_cached_mean": cached_s},
    }
    print(f"{n} items, {result['files']} files, patch {list(patch)}, {cfg.num_workers} workers, "
          f"load {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'reader':<28}{'images/s':>10}")
    print(f"{'bare pydicom':<28}{bare:>10.1f}")
    print(f"{'medgen, first epoch':<28}{first:>10.1f}")
    print(f"{'medgen, cached epochs':<28}{cached:>10.1f}")
    cold = "n/a" if figures["read_mb_cold"] is None else f"{figures['read_mb_cold']:.3f}"
    print(f"per patch: {figures['patch_mb']:.3f} MB at stored width ({', '.join(figures['cache_dtypes'])}), "
          f"{cold} MB read from disk with a cold cache")
    parts = figures["first_epoch_ms_per_item"]
    print(f"first epoch per item in one process: bare pydicom {parts['bare']:.1f} ms, medgen decode (read, window) "
          f"{parts['decode']:.1f} ms + cache write {parts['write']:.1f} ms")
    print(f"cache: {figures['cache_pixel_bytes'] / 1e6:.1f} MB of pixels (+ {(figures['cache_bytes'] - figures['cache_pixel_bytes']) / 1e3:.1f} kB "
          f"of headers and trailers; {figures['cache_entries_in_place']} of {len(items)} entries read their values from "
          f"the item's own file) for {source_bytes / 1e6:.1f} MB of decoded source data")
    for k, v in ratios.items():
        target = f" (target {targets[k][0]} {targets[k][1]}: {'met' if met[k] else 'NOT met'})" if k in targets else ""
        print(f"{k} {'n/a' if v is None else f'{v:.2f}'}{target}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
