"""Data-loading throughput: bare pydicom against medgen's training loader, on the same DICOM files.

Two contenders read the same files in one run:

- **bare pydicom**, the lower bound of work: ``pydicom.dcmread(path).pixel_array`` for every file, in a
  plain loop in this process (no modality LUT, no MONOCHROME1 inversion, no windowing, no batching).
- **medgen**, exactly as training uses it: ``build_dataset(cfg, items, patch_size, train=True)`` and, per
  epoch, ``make_train_loader(cfg, dataset, batch_size, epoch, rank=0, world_size=1)`` with the config's
  ``num_workers``, ``cache="disk"`` in a fresh temporary ``cache_dir`` and the config's transforms (read ->
  percentile window -> pad/resize -> random crop). The first epoch decodes every file and fills the cache;
  the later ones read the cache. The first-epoch time includes ``build_dataset`` and every epoch's time
  includes starting its loader workers, since training pays both.

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
or images directly in ``DIR``) or a synthetic one, e.g. ``medgen demo-data /tmp/demo --size 1024 --count 32``.
The folder should hold only usable images (``medgen check-data DIR`` first): the bare loop stops on the
first file pydicom cannot read. Series folders (3D) count as one item; pass three ``--patch-size`` values.

    python benchmarks/bench_data.py --json benchmarks/results/data_cpu.json
    python benchmarks/bench_data.py --data /path/to/dicoms --workers 4 --epochs 4 --patch-size 256 256

Targets: ``first_epoch_ratio = medgen_first / bare >= 0.8`` and
``cached_speedup = medgen_cached / medgen_first >= 5``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pydicom
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medgen.config import load_config
from medgen.data.datasets import build_dataset, make_train_loader
from medgen.io.reader import find_images

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
FIRST_EPOCH_TARGET, CACHED_SPEEDUP_TARGET = 0.8, 5.0


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
    for epoch in range(epochs):
        n = 0
        for batch in make_train_loader(cfg, dataset, batch_size, epoch, rank=0, world_size=1):
            n += batch["image"].shape[0]
            if tuple(batch["image"].shape[2:]) != patch:
                raise RuntimeError(f"medgen's loader gave a batch of shape {tuple(batch['image'].shape)}, not patches of {patch}")
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return times, n


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="folder to benchmark (default: pydicom's test files, see above)")
    p.add_argument("--copies", type=int, default=24, help="copies of each default file (default 24: 144 items)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: vae_config.json's num_workers)")
    p.add_argument("--epochs", type=int, default=4, help="medgen epochs per round: the first plus K-1 cached (>= 2)")
    p.add_argument("--patch-size", type=int, nargs="+", default=[64, 64], help="2 values (2D) or 3 (3D); default 64 64")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: vae_config.json's)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round (default 3)")
    p.add_argument("--json", type=Path, help="write the results here")
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
        overrides = [
            f"data_base_dir={base}", f"run_dir={tmp / 'run'}", "cache=disk", "data_source=both",
            f"spatial_dims={len(patch)}", f"autoencoder_def.spatial_dims={len(patch)}",
            f"autoencoder_train.patch_size={list(patch)}",
        ]
        if args.workers is not None:
            overrides.append(f"num_workers={args.workers}")
        if args.batch is not None:
            overrides.append(f"autoencoder_train.batch_size={args.batch}")
        cfg = load_config(ROOT / "vae_config.json", overrides)
        batch_size = cfg.autoencoder_train.batch_size

        load_before = os.getloadavg()
        bare_s, first_s, cached_s = [], [], []
        for r in range(args.rounds + 1):  # round 0 warms up imports and the page cache
            b = bare_pass(files_per_item)
            cfg.cache_dir = str(tmp / f"cache{r}")  # empty: the first epoch decodes and fills it
            epochs, n = medgen_pass(cfg, items, patch, args.epochs, batch_size)
            if n != len(items):
                raise RuntimeError(f"medgen's loader gave {n} images per epoch for {len(items)} items")
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
        "patch_size": list(patch),
        "patch_mode": cfg.patch_mode,
        "augment": cfg.augment,
        "num_workers": cfg.num_workers,
        "batch_size": batch_size,
        "epochs_per_round": args.epochs,
        "rounds": args.rounds,
        "bare_imgs_per_s": bare,
        "medgen_first_epoch_imgs_per_s": first,
        "medgen_cached_epoch_imgs_per_s": cached,
        "first_epoch_ratio": first / bare,
        "cached_speedup": cached / first,
        "targets": {"first_epoch_ratio": FIRST_EPOCH_TARGET, "cached_speedup": CACHED_SPEEDUP_TARGET},
        "targets_met": {"first_epoch_ratio": first / bare >= FIRST_EPOCH_TARGET,
                        "cached_speedup": cached / first >= CACHED_SPEEDUP_TARGET},
        "seconds_per_round": {"bare": bare_s, "medgen_first": first_s, "medgen_cached_mean": cached_s},
    }
    print(f"{n} items, {result['files']} files, patch {list(patch)}, {cfg.num_workers} workers, "
          f"load {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'reader':<28}{'images/s':>10}")
    print(f"{'bare pydicom':<28}{bare:>10.1f}")
    print(f"{'medgen, first epoch':<28}{first:>10.1f}")
    print(f"{'medgen, cached epochs':<28}{cached:>10.1f}")
    print(f"first_epoch_ratio {result['first_epoch_ratio']:.2f} (target >= {FIRST_EPOCH_TARGET}), "
          f"cached_speedup {result['cached_speedup']:.2f} (target >= {CACHED_SPEEDUP_TARGET})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
