"""The decoded-image cache: one change stamp per item (every file of a series), shared with the data check."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import torch

from conftest import TINY
from medgen.config import load_config
from medgen.data.check import scan_files
from medgen.data.datasets import build_dataset, make_train_loader
from medgen.data.demo import write_demo_dataset
from medgen.io.discovery import item_signature

SETS_3D = [*TINY, "spatial_dims=3", "autoencoder_def.spatial_dims=3", "autoencoder_train.patch_size=[16,16,16]",
           "cache=disk", "data_source=edente"]


def _edit_slice_in_place(path, value) -> None:
    """Overwrite one slice's pixels in the same file (same size; the folder's own mtime does not change)."""
    ds = pydicom.dcmread(path)
    ds.PixelData = np.full((ds.Rows, ds.Columns), value, dtype=ds.pixel_array.dtype).tobytes()
    ds.save_as(path)


def test_editing_one_slice_of_a_cached_series_is_read_at_the_next_epoch(tmp_path):
    data = write_demo_dataset(tmp_path / "data", spatial_dims=3, count=1, size=16, seed=0)
    series = data / "edente" / "vol_0000"
    cfg = load_config("vae_config.json", [*SETS_3D, f"data_base_dir={data}", f"run_dir={tmp_path / 'run'}"])
    ds = build_dataset(cfg, [{"image": str(series), "label": "edente"}], (16, 16, 16), train=True)

    def epoch(e: int) -> torch.Tensor:  # the whole 16^3 volume: the random crop is the identity here
        return next(iter(make_train_loader(cfg, ds, 1, e, 0, 1)))["image"][0, 0]

    first = epoch(0)
    assert torch.equal(epoch(1), first)  # served from the cache
    cached = sorted((tmp_path / "run" / "cache").rglob("*.pt"))
    assert len(cached) == 1

    folder_mtime, stamp = os.stat(series).st_mtime_ns, item_signature(series)
    slices = sorted(series.glob("*.dcm"))  # slice_000 ... in position order
    size = slices[8].stat().st_size
    _edit_slice_in_place(slices[8], value=4000)  # a bright slab, above the window's upper percentile
    assert os.stat(series).st_mtime_ns == folder_mtime and slices[8].stat().st_size == size
    assert item_signature(series) != stamp

    second = epoch(2)
    assert torch.all(second[8] == 1.0) and not torch.all(first[8] == 1.0)  # the new pixels, windowed
    # the data check's cache sees the same change through the same stamp
    report = scan_files([series], data, 3, None, workers=0, cache_path=tmp_path / "scan.json")
    assert report[0].ok


def test_data_check_cache_notices_an_edited_slice(tmp_path):
    data = write_demo_dataset(tmp_path / "data", spatial_dims=3, count=1, size=16, seed=0)
    series = data / "edente" / "vol_0000"
    cache = tmp_path / "scan.json"
    assert scan_files([series], data, 3, None, workers=0, cache_path=cache)[0].ok
    _edit_slice_in_place(sorted(series.glob("*.dcm"))[3], value=0)  # the whole volume still reads
    first_slice = sorted(series.glob("*.dcm"))[0]
    first_slice.write_bytes(first_slice.read_bytes()[:400])  # and now one slice is cut short, in place
    report = scan_files([series], data, 3, None, workers=0, cache_path=cache)[0]
    assert not report.ok and report.reason == "truncated", report
