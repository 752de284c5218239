"""The decoded-image disk cache: one change stamp per item (every file of a series), shared with the data check;
stored integers memory-mapped, patches cut at read equal to the uncached chain's; persistent seeded workers."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from conftest import TINY
from medgen.config import load_config
from medgen.data import cache as disk_cache
from medgen.data.cache import PAGE, ChunkedValues, DiskImageCache, FileRows
from medgen.data.check import scan_files
from medgen.data.datasets import build_dataset, make_train_loader
from medgen.data.demo import write_demo_dataset
from medgen.data.transforms import DecodedImage
from medgen.io.discovery import find_images, item_signature
from medgen.io.image import ImageReadError, Pixels

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
    ds.base.cache.flush()  # the entry is written behind the reader
    cached = sorted((tmp_path / "run" / "cache").rglob("*.npy"))
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


# ------------------------------------------------------------------------------------- the memory-mapped cache
def _pair(tmp_path, data, dims: int, patch, extra=()):
    """An uncached dataset (the reference chain) and a disk-cached one over the same items and settings."""
    items = [{"image": str(p), "label": "x"} for p in find_images(data)]
    sets = [*TINY, f"data_base_dir={data}", f"run_dir={tmp_path / 'run'}", f"spatial_dims={dims}",
            f"autoencoder_def.spatial_dims={dims}", f"autoencoder_train.patch_size={list(patch)}", *extra]
    return items, load_config("vae_config.json", [*sets, "cache=none"]), load_config("vae_config.json", [*sets, "cache=disk"])


@pytest.mark.parametrize("dims, patch, extra", [
    (2, (32, 48), []),  # 40x40 images: cropped along one axis, padded along the other
    (2, (32, 48), ["cache_in_place=false"]),  # the same, from a copy in the cache instead of the file itself
    (2, (32, 48), ["augment=true"]),
    (2, (24, 24), ["patch_mode=resize", "augment=true"]),
    (3, (8, 20, 12), []),  # 16^3 volumes, padded along one axis
])
def test_cached_patches_equal_the_uncached_ones(demo2d, demo3d, tmp_path, dims, patch, extra):
    items, plain, cached = _pair(tmp_path, demo2d if dims == 2 else demo3d, dims, patch, extra)
    for train in (True, False):
        reference = build_dataset(plain, items, patch, train=train)
        for attempt in ("decoded now", "read from the cache"):
            dataset = build_dataset(cached, items, patch, train=train)
            for i in range(len(items)):
                key = (3, i) if train else i  # training items seeded by (epoch, index), as the loader asks
                want, got = reference[key], dataset[key]
                assert got["image"].shape == (1, *patch)
                assert torch.equal(torch.as_tensor(want["image"]), got["image"]), (attempt, train, i)
                assert torch.equal(want["image_spacing"], got["image_spacing"])



def test_patches_per_image_draws_that_many_different_patches_of_each_image_per_epoch(demo3d, tmp_path):
    items, _, cfg = _pair(tmp_path, demo3d, 3, (8, 8, 8), ["patches_per_image=3"])
    n = len(items)
    train, val = build_dataset(cfg, items, (8, 8, 8), train=True), build_dataset(cfg, items, (8, 8, 8), train=False)
    assert (len(train), len(val)) == (3 * n, n)
    repeats = [train[(0, i + k * n)]["image"] for i in (0, 1) for k in range(3)]
    assert all(r.shape == (1, 8, 8, 8) for r in repeats)
    for a in range(len(repeats)):  # every repeat its own crop (16^3 volumes hold 729 positions)
        assert not any(torch.equal(repeats[a], repeats[b]) for b in range(a + 1, len(repeats)))
    assert torch.equal(train[(0, 4)]["image"], build_dataset(cfg, items, (8, 8, 8), train=True)[(0, 4)]["image"])
    loader = make_train_loader(cfg, train, batch_size=2, epoch=0, rank=0, world_size=1)
    assert len(loader) == (3 * n + 1) // 2
    with pytest.raises(Exception, match="patches_per_image=3 needs patch_mode=crop"):
        load_config("vae_config.json", [*TINY, "patches_per_image=3", "patch_mode=resize"])

def test_the_cache_holds_stored_integers_memory_mapped_and_no_more_than_the_source(demo2d, demo3d, tmp_path):
    for data, dims, patch, dtype in [(demo2d, 2, (32, 32), np.uint16), (demo3d, 3, (8, 8, 8), np.int16)]:
        # 2D: copied only when asked; uncompressed files are otherwise read in place (next test)
        items, _, cfg = _pair(tmp_path / str(dims), data, dims, patch, ["cache_in_place=false"] if dims == 2 else [])
        dataset = build_dataset(cfg, items, patch, train=True)
        dataset[0, 0]
        dataset.base.cache.flush()
        (entry,) = (tmp_path / str(dims) / "run" / "cache").rglob("*.npy")
        stored = np.load(entry, mmap_mode="r")  # an ordinary .npy (flat, in chunks): the trailer follows the values
        pixels = sum(int(np.prod(pydicom.dcmread(f).pixel_array.shape)) * 2 for f in dicom_files(items[0]["image"]))
        assert stored.dtype == dtype and stored.nbytes == pixels
        assert entry.stat().st_size < PAGE + pixels + 1024  # a page-long header and the trailer only
        image = dataset.base.cache.get(items[0]["image"])  # read back: chunks over a read-only map of the file
        values = image.pixels.values
        assert isinstance(values, ChunkedValues) and not values.storage.flags.writeable
        assert not values.storage.flags.owndata
        assert image.window is not None and image.window[0] < image.window[1]


def test_an_uncompressed_radiograph_is_read_from_its_own_file_and_not_copied(demo2d, tmp_path):
    items, _, cfg = _pair(tmp_path, demo2d, 2, (32, 32))
    dataset = build_dataset(cfg, items, (32, 32), train=True)
    first = dataset[0, 0]["image"]
    (entry,) = (tmp_path / "run" / "cache").rglob("*.npy")
    assert entry.stat().st_size < PAGE + 512 and np.load(entry).size == 0  # the header and the trailer only
    image = build_dataset(cfg, items, (32, 32), train=True).base.cache.get(items[0]["image"])
    values = image.pixels.values
    assert isinstance(values, FileRows) and values.path == Path(items[0]["image"])
    stored = pydicom.dcmread(items[0]["image"]).pixel_array
    assert values.shape == stored.shape and values.dtype == stored.dtype
    assert np.array_equal(values[:, :], stored) and np.array_equal(values[5:9, 30:50], stored[5:9, 30:50])
    assert torch.equal(build_dataset(cfg, items, (32, 32), train=True)[0, 0]["image"], first)


def test_an_in_place_radiograph_edited_or_cut_short_is_decoded_again_or_skipped(demo2d, tmp_path):
    data = shutil.copytree(demo2d, tmp_path / "data")  # edited here: the demo set is shared by the session
    items, _, cfg = _pair(tmp_path, data, 2, (40, 40))  # the whole 40x40 image
    path = items[0]["image"]
    dataset = build_dataset(cfg, items, (40, 40), train=True)
    before = dataset[0, 0]["image"]
    ds = pydicom.dcmread(path)  # same size, new pixels: a bright square
    pixels = ds.pixel_array.copy()
    pixels[:20, :20] = pixels.max()
    ds.PixelData = pixels.tobytes()
    ds.save_as(path)
    after = dataset[0, 0]["image"]
    assert not torch.equal(after, before) and torch.all(after[0, :20, :20] == 1.0)
    assert len(list((tmp_path / "run" / "cache").rglob("*.npy"))) == 2  # a new entry for the new change stamp
    # cut short after its entry was read: the patch's read says so, and the loader skips the item
    image = dataset.base.cache.get(path)
    Path(path).write_bytes(Path(path).read_bytes()[:1200])
    with pytest.raises(ImageReadError, match="shorter") as err:
        image.pixels.values[:, :]
    assert err.value.reason == "truncated"
    assert dataset[0, 0]["image"].shape == (1, 40, 40)  # the next item instead
    assert "truncated" in (tmp_path / "run" / "unreadable_rank0.jsonl").read_text()


@pytest.mark.parametrize("shape", [(40, 40), (1, 100), (100, 1), (37, 53)])
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.int32])
def test_crops_of_file_rows_equal_crops_of_the_array(tmp_path, shape, dtype):
    rng = np.random.default_rng(0)
    values = rng.integers(-100, 250, shape).astype(dtype)
    path = tmp_path / "image.raw"
    path.write_bytes(b"header--" * 5 + values.tobytes() + b"tail")
    rows = FileRows(path, 40, values.dtype, shape)
    crops = [(slice(None), slice(None)), (slice(-1, None), slice(0, 1)), (slice(3, 3), slice(0, 5))]
    for _ in range(40):  # random regions, clipped at the edges as numpy clips them
        crops.append(tuple(slice(int(a), int(a + rng.integers(0, n + 3))) for n, a in
                           zip(shape, (rng.integers(-1, n + 1) for n in shape))))
    for crop in crops:
        got = rows[crop]
        assert got.dtype == values.dtype and np.array_equal(got, values[crop]), crop
    with pytest.raises(TypeError, match="2 slices"):
        rows[0, :]


def dicom_files(item: str) -> list:
    p = Path(item)
    return sorted(p.iterdir()) if p.is_dir() else [p]


@pytest.mark.parametrize("damage", ["cut short", "garbage", "empty"])
def test_a_damaged_cache_entry_is_decoded_again(demo2d, tmp_path, damage, caplog):
    items, _, cfg = _pair(tmp_path, demo2d, 2, (32, 32))
    dataset = build_dataset(cfg, items, (32, 32), train=True)
    first = dataset[0, 0]["image"]
    dataset.base.cache.flush()
    (entry,) = (tmp_path / "run" / "cache").rglob("*.npy")
    whole = entry.read_bytes()
    entry.write_bytes({"cut short": whole[: len(whole) // 2], "garbage": b"\x93NUMPY" + os.urandom(300), "empty": b""}[damage])
    with caplog.at_level("WARNING", logger="medgen.data"):
        dataset = build_dataset(cfg, items, (32, 32), train=True)
        again = dataset[0, 0]["image"]
        dataset.base.cache.flush()
    assert torch.equal(again, first)
    assert "damaged" in caplog.text and entry.name in caplog.text
    assert entry.read_bytes() == whole  # rewritten whole


@pytest.mark.parametrize("in_place", ["true", "false"])
def test_a_cache_that_cannot_be_written_warns_once_and_training_goes_on(demo2d, tmp_path, monkeypatch, caplog, in_place):
    items, _, cfg = _pair(tmp_path, demo2d, 2, (32, 32), [f"cache_in_place={in_place}"])
    dataset = build_dataset(cfg, items, (32, 32), train=True)
    real = disk_cache.atomic_path

    @contextlib.contextmanager
    def disk_full(path):  # the temporary file is created, its first write fails
        with real(path) as tmp:
            yield tmp
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk_cache, "atomic_path", disk_full)
    with caplog.at_level("WARNING", logger="medgen.data"):
        patches = [dataset[0, i]["image"] for i in range(3)]
        dataset.base.cache.flush()
    assert all(p.shape == (1, 32, 32) for p in patches)
    assert caplog.text.count("cannot write the image cache") == 1 and "cache_dir" in caplog.text
    assert not list((tmp_path / "run" / "cache").rglob("*"))[1:]  # the folder only: nothing half-written



# ------------------------------------------------------------------------------------- the chunked entry layout
def _image_cache(folder, images: dict, calls: list, **kwargs) -> DiskImageCache:
    """A cache whose items are the arrays of ``images`` (item path -> values), counting decodes in ``calls``."""
    def decode(path):
        calls.append(path)
        return DecodedImage(Pixels(images[path], 2.0, -1.0), (0.0, 1.0), (1.0,) * images[path].ndim)
    return DiskImageCache(folder, decode, **kwargs)


@pytest.mark.parametrize("shape", [(40, 40), (64, 64), (130, 70), (1, 100), (2943 // 16, 1435 // 16),
                                   (16, 16, 16), (17, 33, 5), (40, 20, 33), (3, 3, 3)])
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.float32])
def test_crops_of_a_chunked_entry_equal_crops_of_the_decoded_array(tmp_path, shape, dtype):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 250, shape).astype(dtype)
    item = tmp_path / "item.dcm"  # only its change stamp matters here
    item.write_bytes(b"x")
    calls = []
    first = _image_cache(tmp_path / "cache", {str(item): values}, calls)
    first.get(str(item))
    first.flush()
    image = _image_cache(tmp_path / "cache", {str(item): values}, calls).get(str(item))  # read from the file
    assert isinstance(image.pixels.values, ChunkedValues) and image.pixels.values.shape == shape
    assert (image.pixels.slope, image.pixels.intercept, image.window) == (2.0, -1.0, (0.0, 1.0))
    (entry,) = (tmp_path / "cache").glob("*.npy")
    assert entry.stat().st_size < PAGE + values.nbytes + 512  # no padding, whatever the shape
    crops = [tuple(slice(None) for _ in shape), tuple(slice(n - 1, n) for n in shape),  # all; the last corner
             tuple(slice(0, 1) for _ in shape)]
    for _ in range(40):  # random regions, many across chunk boundaries and image edges (clipped as numpy clips)
        crops.append(tuple(slice(int(a), int(a + rng.integers(0, n + 3))) for n, a in
                           zip(shape, (rng.integers(-1, n + 1) for n in shape))))
    for crop in crops:
        got = image.pixels.values[crop]
        assert got.dtype == values.dtype and np.array_equal(got, values[crop]), crop


def test_an_entry_is_served_from_memory_while_written_and_never_seen_half_written(demo2d, tmp_path, monkeypatch):
    item = str(find_images(demo2d)[0])
    values = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40)
    written, release = threading.Event(), threading.Event()
    real = disk_cache.write_chunked

    def slow(f, *args):  # the values are in the temporary file, the trailer not yet
        real(f, *args)
        if threading.current_thread().name == "medgen-cache-writer":
            written.set()
            assert release.wait(30)

    monkeypatch.setattr(disk_cache, "write_chunked", slow)
    calls = []
    writer = _image_cache(tmp_path, {item: values}, calls)
    try:
        assert writer.get(item).pixels.values is values  # the first read serves the decoded image at once
        assert written.wait(30)
        assert writer.get(item).pixels.values is values and len(calls) == 1  # from memory while being written
        assert [p.name.startswith(".tmp-") for p in tmp_path.iterdir()] == [True]  # only the temporary file
        other = _image_cache(tmp_path, {item: values}, calls, write_behind=False)  # another rank or worker
        assert other.get(item).pixels.values is values and len(calls) == 2  # no entry yet: it decodes for itself
    finally:
        release.set()
    writer.flush()
    assert [p.name.startswith(".tmp-") for p in tmp_path.iterdir()] == [False]  # one whole entry
    again = _image_cache(tmp_path, {item: values}, calls).get(item)
    assert np.array_equal(again.pixels.values[:, :], values) and len(calls) == 2


def test_an_entry_of_another_format_is_decoded_again(demo2d, tmp_path, caplog):
    item = str(find_images(demo2d)[0])
    values = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40)
    calls = []
    cache = _image_cache(tmp_path, {item: values}, calls, write_behind=False)
    cache.get(item)
    (entry,) = tmp_path.glob("*.npy")
    whole = entry.read_bytes()
    entry.write_bytes(whole.replace(b'"format": %d' % disk_cache.FORMAT, b'"format": 3'))  # e.g. rows, not chunks
    with caplog.at_level("WARNING", logger="medgen.data"):
        again = _image_cache(tmp_path, {item: values}, calls, write_behind=False).get(item)
    assert again.pixels.values is values and len(calls) == 2 and "damaged" in caplog.text
    assert entry.read_bytes() == whole

def test_persistent_workers_give_the_patches_of_a_single_process(demo2d, tmp_path):
    items, _, cfg = _pair(tmp_path, demo2d, 2, (32, 32))
    dataset = build_dataset(cfg, items, (32, 32), train=True)

    def epochs(workers: int, start: int = 0) -> list[torch.Tensor]:
        cfg.num_workers = workers
        loader = make_train_loader(cfg, dataset, 2, 0, 0, 1, start=start)
        out = []
        for epoch in (0, 1):  # the same loader (and, with workers, the same worker processes) for both epochs
            loader.sampler.set_epoch(epoch, start=start if epoch == 1 else 0)
            out.append(torch.cat([b["image"] for b in loader]))
        return out

    single = epochs(0)
    assert not torch.equal(single[0], single[1])  # each epoch draws its own crops
    two = epochs(2, start=1)  # and a run resumed at batch 1 of epoch 1 sees the rest of that epoch
    assert torch.equal(two[0], single[0]) and torch.equal(two[1], single[1][2:])


def test_temporaries_a_killed_worker_left_are_swept_and_live_ones_kept(tmp_path):
    import os
    import time

    from medgen.data.cache import STALE_TEMPORARY_S

    folder = tmp_path / "cache"
    folder.mkdir()
    stale, live = folder / ".tmp-abc-entry.npy", folder / ".tmp-def-entry.npy"
    for f in (stale, live):
        f.write_bytes(b"half")
    old = time.time() - STALE_TEMPORARY_S - 60
    os.utime(stale, (old, old))
    _image_cache(folder, {}, [])
    assert not stale.exists() and live.exists()  # a write in progress elsewhere is left alone


def test_latent_crops_take_patches_per_image_as_the_image_datasets_do(tmp_path):
    from medgen.data.latents import LatentCrops, save_latent

    paths = [save_latent({"z_mu": torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(k))}, tmp_path / f"z{k}.pt")
             for k in range(2)]
    once, thrice = LatentCrops(paths, [0, 1], (8, 8), seed=0), LatentCrops(paths, [0, 1], (8, 8), seed=0, repeats=3)
    assert (len(once), len(thrice)) == (2, 6)
    crops = [thrice[(0, j)] for j in range(6)]
    assert [c["label"] for c in crops] == [0, 1, 0, 1, 0, 1]
    assert torch.equal(crops[1]["image"], once[(0, 1)]["image"])  # the first repeat is the crop without repeats
    assert not torch.equal(crops[0]["image"], crops[2]["image"]) and not torch.equal(crops[2]["image"], crops[4]["image"])


def _sparse_images(folder: Path, count: int = 3) -> Path:
    """48x48 PNG images, black but for one bright 10x10 square each: mostly empty, like a thresholded angiogram."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "edente").mkdir(parents=True)
    for k in range(count):
        a = np.zeros((48, 48), np.uint8)
        y, x = rng.integers(0, 38, size=2)
        a[y:y + 10, x:x + 10] = 200 + k
        a[0, 0] = 255  # the window's top (percentile 99.5 would otherwise be the square itself)
        Image.fromarray(a).save(folder / "edente" / f"img_{k}.png")
    return folder


@pytest.mark.parametrize("cache", ["none", "disk"])
def test_patch_min_foreground_redraws_empty_patches(tmp_path, cache):
    data = _sparse_images(tmp_path / "data")
    items = [{"image": str(p), "label": "x"} for p in find_images(data)]
    sets = [*TINY, f"data_base_dir={data}", f"run_dir={tmp_path / 'run'}", "autoencoder_train.patch_size=[12,12]",
            f"cache={cache}", "patches_per_image=20"]

    def shares(extra):
        ds = build_dataset(load_config("vae_config.json", [*sets, *extra]), items, (12, 12), train=True)
        return np.array([float((ds[(0, j)]["image"] > 0.05).float().mean()) for j in range(len(ds))])

    uniform, redrawn = shares([]), shares(["patch_min_foreground=0.2"])
    # a 12x12 crop of a 48x48 image holds a fifth of the square in about one uniform draw of ten (p), so ten draws
    # reach it about 1 - (1 - p)^10 of the time; the others keep the draw with the most of the square
    p = (uniform >= 0.2).mean()
    assert p < 0.25 and (redrawn >= 0.2).mean() > min(0.6, 1 - (1 - p) ** 10 - 0.15)
    assert redrawn.mean() > 3 * uniform.mean()
    assert np.array_equal(redrawn, shares(["patch_min_foreground=0.2"]))  # the same seed, the same patches


def test_patch_min_foreground_patches_are_the_same_cached_or_not(demo3d, tmp_path):
    items, plain, cached = _pair(tmp_path, demo3d, 3, (8, 8, 8), ["patch_min_foreground=0.6"])
    reference, dataset = build_dataset(plain, items, (8, 8, 8), train=True), build_dataset(cached, items, (8, 8, 8), train=True)
    for i in range(len(items)):
        assert torch.equal(torch.as_tensor(reference[(1, i)]["image"]), dataset[(1, i)]["image"]), i
    with pytest.raises(Exception, match="patch_min_foreground=1.5 must be a share"):
        load_config("vae_config.json", [*TINY, "patch_min_foreground=1.5"])
