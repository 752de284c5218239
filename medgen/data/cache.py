"""The decoded-image disk cache: one ``.npy`` file per item, shared by every rank.

An entry holds :func:`medgen.data.transforms.decode`'s :class:`~medgen.data.transforms.DecodedImage`: the
decoded values at their own width (uint16 for a 16-bit radiograph, int16 for CT) stored in chunks of
:data:`CHUNK_VALUES` values (64x64 in 2D, 16^3 in 3D, page-aligned), followed by a JSON trailer with the
image's shape, the values' map to presentation values, the intensity window and the spacing. A training patch
gathers the chunks it touches out of the memory map (:class:`ChunkedValues`), so with a cold page cache it
reads about 1.4-1.6x its own bytes (a row layout read 2x for a 128^3 patch of a 256^3 volume and 8x for a
256^2 patch of a 2048^2 radiograph: every row of a patch is its own page); only the patch is converted to
float and windowed.

A 2D image whose decoded values are its file's own bytes (uncompressed DICOM in native byte order, the usual
radiograph) is not copied: its entry holds the trailer only, with the values' offset in the item's file, and a
patch reads its rows from that file (:class:`FileRows`: one read of a contiguous band, no read-ahead). Copying it
cost more than decoding it (the first epoch wrote 8 MB per 2048^2 image), and its file already holds exactly
what the cache would. ``in_place=False`` (config ``cache_in_place: false``) copies these too, e.g. to keep
training's reads on a fast local ``cache_dir`` when the data sit on a slow shared file system.

- Named by the item's path and change stamp (:func:`medgen.io.discovery.item_signature`, taken at every read):
  an edited file or series slice is decoded again at its next read and the old entry is never served.
- Written atomically (:func:`medgen.io.files.atomic_path`) by whichever process needs it first; a copy on a
  thread beside the reader (:class:`_WriteBehind`): the first epoch's patch is cut from the decoded image at
  once, and the entry is served from memory until its file is complete. Other ranks and loader workers read the
  file. Two writers of one entry write the same bytes.
- A damaged entry (cut short, overwritten, another format or :data:`FORMAT`) is decoded again and rewritten; if
  the cache folder cannot be written (disk full), training goes on with the decoded image and a warning.

``np.load(path, mmap_mode="r")`` opens an entry as a flat array of the stored values in chunk order (empty for
an entry that points into the item's file).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import mmap
import os
import struct
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from medgen.data.transforms import DecodedImage
from medgen.io.discovery import item_signature
from medgen.io.files import atomic_path
from medgen.io.image import ImageReadError, Pixels

log = logging.getLogger("medgen.data")

FORMAT = 5  # what an entry holds (5: chunked values, or the place of the values in the item's file); part of the
# folder name and the trailer, so no other is read
PAGE = 4096  # the values start at this offset: whole chunks are whole pages
CHUNK_VALUES = 4096  # values per chunk: 64x64 or 16^3, a whole number of pages for any value width
WRITE_PIECE = 1 << 20  # bytes per write call: one 8 MB write() cost 7x the CPU of eight 1 MB ones on ext4
WAITING_WRITES = 1  # decoded images a process keeps in memory for the writer beyond the one being written


def chunk_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The chunk of an image of ``shape``: a cube of :data:`CHUNK_VALUES` values (64x64, 16x16x16)."""
    return (round(CHUNK_VALUES ** (1 / len(shape))),) * len(shape)


def _boxes(shape: Sequence[int], chunks: Sequence[int]) -> list[tuple[tuple[slice, ...], tuple[int, ...]]]:
    """The layout of an entry: the image split along each axis into whole chunks and the rest (when the size is
    not a multiple of the chunk), giving up to 2^ndim boxes, stored one after another in this order, each box
    chunk after chunk (C order of its chunk grid), each chunk in C order. A box's chunk is the whole chunk or, along
    an axis where the box is the rest, the rest's width, so nothing is padded: an entry is exactly the image's size.

    Returns:
        ``(region of the image, chunk shape)`` per box.
    """
    per_axis = []
    for n, c in zip(shape, chunks):
        whole = n // c * c
        parts = [(slice(0, whole), c)] if whole else []
        if n > whole:
            parts.append((slice(whole, n), n - whole))
        per_axis.append(parts)
    return [(tuple(r for r, _ in combo), tuple(k for _, k in combo)) for combo in itertools.product(*per_axis)]


def _grid(region: Sequence[slice], chunk: Sequence[int]) -> tuple[int, ...]:
    return tuple((r.stop - r.start) // k for r, k in zip(region, chunk))


def _split_axes(a: np.ndarray, chunk: Sequence[int]) -> np.ndarray:
    """A view of ``a`` (each axis a whole number of chunks) with each axis split in (chunk index, position in the
    chunk): shape ``(g0, k0, g1, k1, ...)``. Built from strides, so it is always a view (writes go to ``a``)."""
    shape, strides = [], []
    for n, k, st in zip(a.shape, chunk, a.strides):
        shape += [n // k, k]
        strides += [k * st, st]
    return np.lib.stride_tricks.as_strided(a, shape, strides)


def _chunk_order(ndim: int) -> list[int]:
    """Axes of a split view ``(g0, k0, g1, k1, ...)`` in stored order ``(g0, g1, ..., k0, k1, ...)``."""
    return [*range(0, 2 * ndim, 2), *range(1, 2 * ndim, 2)]


class FileRows:
    """A 2D image whose values lie row after row in a file (an uncompressed DICOM image, read where it is);
    ``values[rows, cols]`` reads the band of the rows the region touches with one read and returns the region.

    Args:
        path: the file.
        offset: of the first value in the file.
        dtype: the values' type (native byte order).
        shape: ``(rows, cols)``.

    The file is opened for each read (no memory map: a file truncated while training runs gives an
    :class:`~medgen.io.image.ImageReadError`, not a SIGBUS) and read without read-ahead, so with a cold page
    cache a patch costs the pages of its rows and no more.
    """

    def __init__(self, path: str | os.PathLike, offset: int, dtype: np.dtype, shape: Sequence[int]):
        self.path, self.offset, self.dtype = Path(path), int(offset), np.dtype(dtype)
        self.shape = tuple(int(n) for n in shape)
        self.ndim, self.size = len(self.shape), math.prod(self.shape)
        if self.ndim != 2:
            raise ValueError(f"FileRows reads 2D images, not shape {self.shape}")

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) != 2 or not all(isinstance(s, slice) and s.step in (None, 1) for s in key):
            raise TypeError(f"an image read from its file is indexed with 2 slices of step 1, not {key!r}")
        (r0, r1), (c0, c1) = [s.indices(n)[:2] for s, n in zip(key, self.shape)]
        band = np.empty((max(r1 - r0, 0), self.shape[1]), self.dtype)
        if band.size:
            self._read_into(band, self.offset + r0 * self.shape[1] * self.dtype.itemsize)
        return band[:, c0:max(c0, c1)]

    def _read_into(self, band: np.ndarray, start: int) -> None:
        view, done = memoryview(band).cast("B"), 0
        with open(self.path, "rb", buffering=0) as f:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)  # the band's pages only: no read-ahead
            f.seek(start)
            while done < len(view):
                got = f.readinto(view[done:])
                if not got:
                    raise ImageReadError(self.path, "truncated", "the file became shorter while training read it "
                                                                 "(replaced or cut short?)")
                done += got


class ChunkedValues:
    """An image stored in chunks (a cache entry's values); ``values[slices]`` gathers the chunks the region touches.

    Args:
        storage: the stored values, flat, in the order :func:`_boxes` describes (e.g. a memory map).
        shape: the image's shape.
        chunks: the chunk shape.

    Indexing takes one slice per axis (step 1; starts and stops are clipped as numpy clips them) and returns an
    ndarray of that region (a view of a fresh buffer of the touched chunks).
    """

    def __init__(self, storage: np.ndarray, shape: Sequence[int], chunks: Sequence[int]):
        self.shape, self.chunks, self.dtype = tuple(int(n) for n in shape), tuple(int(c) for c in chunks), storage.dtype
        self.ndim, self.size = len(self.shape), math.prod(self.shape)
        if storage.size != self.size or len(self.chunks) != self.ndim:
            raise ValueError(f"{storage.size} stored values for an image of shape {self.shape}")
        self.storage = storage
        self._boxes = []  # (region, chunk shape, the box's chunks as an array (*grid, *chunk))
        offset = 0
        for region, chunk in _boxes(self.shape, self.chunks):
            grid = _grid(region, chunk)
            n = math.prod(grid) * math.prod(chunk)
            self._boxes.append((region, chunk, storage[offset:offset + n].reshape(grid + chunk)))
            offset += n

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) != self.ndim or not all(isinstance(s, slice) and s.step in (None, 1) for s in key):
            raise TypeError(f"a chunked image is indexed with {self.ndim} slices of step 1, not {key!r}")
        bounds = [s.indices(n)[:2] for s, n in zip(key, self.shape)]
        bounds = [(start, max(start, stop)) for start, stop in bounds]
        # the touched chunks, per axis: from the chunk holding the start to the end of the one holding the last value
        lo = [start // c * c for (start, _), c in zip(bounds, self.chunks)]
        hi = [min(-(-stop // c) * c, n) if stop > start else a for (start, stop), c, n, a in zip(bounds, self.chunks, self.shape, lo)]
        gathered = np.empty([b - a for a, b in zip(lo, hi)], self.dtype)
        for region, chunk, box in self._boxes:
            # within a box the touched range starts and ends on its chunk boundaries (a rest box is one chunk wide)
            part_lo = [max(a, r.start) for a, r in zip(lo, region)]
            part_hi = [min(b, r.stop) for b, r in zip(hi, region)]
            if any(b <= a for a, b in zip(part_lo, part_hi)):
                continue
            cells = box[tuple(slice((a - r.start) // k, (b - r.start) // k)
                              for a, b, r, k in zip(part_lo, part_hi, region, chunk))]
            dst = gathered[tuple(slice(a - g, b - g) for a, b, g in zip(part_lo, part_hi, lo))]
            np.copyto(_split_axes(dst, chunk).transpose(_chunk_order(self.ndim)), cells)
        return gathered[tuple(slice(start - a, stop - a) for (start, stop), a in zip(bounds, lo))]


def write_chunked(f, values: np.ndarray, chunks: Sequence[int]) -> None:
    """Write ``values`` to the file ``f`` in the chunked order of :func:`_boxes`, :data:`WRITE_PIECE` bytes at a
    time at most (whole chunks), copying one piece at a time."""
    order = _chunk_order(values.ndim)
    for region, chunk in _boxes(values.shape, chunks):
        cells = _split_axes(values[region], chunk).transpose(order)  # (*grid, *chunk), a view
        grid = cells.shape[:values.ndim]
        # iterate over the leading chunk-grid axes until what is left fits in a piece
        lead = 0
        while lead < len(grid) and math.prod(cells.shape[lead:]) * values.itemsize > WRITE_PIECE:
            lead += 1
        buffer = np.empty(cells.shape[lead:], values.dtype)
        for index in np.ndindex(*grid[:lead]):
            np.copyto(buffer, cells[index])
            f.write(memoryview(buffer).cast("B"))


def _npy_header(dtype: np.dtype, count: int, length: int = PAGE) -> bytes:
    """A version 1.0 .npy header of a flat array of ``count`` values, padded to ``length`` bytes."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (count,)})
    start = b"\x93NUMPY\x01\x00"
    size = length - len(start) - 2
    return start + struct.pack("<H", size) + text.ljust(size - 1).encode("latin1") + b"\n"


class _WriteBehind:
    """Writes cache entries on a thread beside the reader, so that a first epoch's item waits for its decode only.

    At most :data:`WAITING_WRITES` entries wait while one is written (the reader blocks beyond that, so memory
    stays bounded); until its file is complete, an entry is served from memory (:meth:`pending`). The thread is
    started on demand and ends when nothing waits; it is not a daemon, so a process that exits (a loader worker
    at shutdown, the main process at the end) first finishes the waiting writes. Every write is atomic, so an
    interrupted one leaves no entry, never a partial one.
    """

    def __init__(self, write: Callable[[Path, DecodedImage, str], None]):
        self._write, self._pid = write, None

    def __getstate__(self) -> dict:  # a spawned loader worker gets a copy without the parent's thread and lock
        return {"_write": self._write, "_pid": None}

    def _own(self) -> None:
        # A forked loader worker inherits the parent's state but not its thread, and maybe a held lock: start afresh.
        if self._pid != os.getpid():
            self._pid, self._cond, self._jobs, self._thread = os.getpid(), threading.Condition(), {}, None

    def submit(self, entry: Path, image: DecodedImage, stamp: str) -> None:
        self._own()
        with self._cond:
            while len(self._jobs) > WAITING_WRITES:
                self._cond.wait()
            self._jobs[entry] = (image, stamp)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="medgen-cache-writer", daemon=False)
                self._thread.start()

    def pending(self, entry: Path) -> DecodedImage | None:
        """The image of ``entry`` if this process is still writing it."""
        self._own()
        with self._cond:
            job = self._jobs.get(entry)
        return None if job is None else job[0]

    def wait(self) -> None:
        """Return when this process has written every entry handed to it."""
        self._own()
        with self._cond:
            while self._jobs:
                self._cond.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._jobs:
                    self._thread = None
                    return
                entry, (image, stamp) = next(iter(self._jobs.items()))
            try:
                self._write(entry, image, stamp)
            except Exception:  # a bug, not a full disk (handled by the writer): say so, the run goes on uncached
                log.exception("writing the cache entry %s failed", entry)
            finally:
                with self._cond:
                    del self._jobs[entry]
                    self._cond.notify_all()


STALE_TEMPORARY_S = 3600  # a temporary entry this old is no live writer's: its worker was killed mid-write


def _sweep_temporaries(folder: Path) -> None:
    """Remove the temporaries (``.tmp-*``) of writes that a killed worker left behind."""
    cutoff = time.time() - STALE_TEMPORARY_S
    for tmp in folder.glob(".tmp-*"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:  # another process swept it first
            pass


class DiskImageCache:
    """Decoded images on disk, one entry per item and change stamp.

    Args:
        folder: the cache folder (created).
        decode: makes an item's :class:`DecodedImage` from its path (raises ImageReadError when it cannot).
        random_access: read entries in small pieces (training patches): tell the kernel not to read ahead.
        write_behind: write new entries on a thread beside the reader (:class:`_WriteBehind`); else at once.
        in_place: a 2D image whose values are its file's own bytes (``DecodedImage.values_offset``: uncompressed
            DICOM) is read from that file: its entry holds the window and the offset, not a copy of the values.
    """

    def __init__(self, folder: str | os.PathLike, decode: Callable[[str], DecodedImage], random_access: bool = True,
                 write_behind: bool = True, in_place: bool = True):
        self.folder, self.decode, self.random_access, self.in_place = Path(folder), decode, random_access, in_place
        self.folder.mkdir(parents=True, exist_ok=True)
        _sweep_temporaries(self.folder)
        self._write_failed = False
        self._writer = _WriteBehind(self._write) if write_behind else None
        # entry file -> (size, layout): parsing an .npy header (ast.literal_eval) cost more than cutting the patch.
        # Entries are named by content, so a layout stays right while the file keeps its size.
        self._layouts: dict[Path, tuple[int, Layout]] = {}

    def entry_path(self, path: str, stamp: str) -> Path:
        return self.folder / (hashlib.sha1(f"{path}\0{stamp}".encode()).hexdigest() + ".npy")

    def get(self, path: str) -> DecodedImage:
        """The item's decoded image: from its entry, or decoded now and its entry written (behind, by default)."""
        stamp = item_signature(path)
        if stamp is None:  # gone: the reader says how
            return self.decode(path)
        entry = self.entry_path(path, stamp)
        image = self._writer.pending(entry) if self._writer is not None else None
        if image is None:
            image = self._read(entry, stamp, path)
        if image is None:
            image = self.decode(path)
            if self._writer is not None and self._in_file(image) is None:  # a copy: written behind
                self._writer.submit(entry, image, stamp)
            else:  # a few hundred bytes: at once
                self._write(entry, image, stamp)
        return image

    def _in_file(self, image: DecodedImage) -> int | None:
        """Where the entry of ``image`` points in the item's file, or None when it holds a copy of the values."""
        offset = image.values_offset
        return offset if self.in_place and offset is not None and np.ndim(image.pixels.values) == 2 else None

    def put(self, path: str, image: DecodedImage, stamp: str) -> None:
        """Write the entry of ``path`` (whose change stamp was ``stamp`` when it was decoded) atomically, now."""
        self._write(self.entry_path(path, stamp), image, stamp)

    def flush(self) -> None:
        """Return when every entry this process decoded is on disk (or failed to be written, with a warning)."""
        if self._writer is not None:
            self._writer.wait()

    def _write(self, entry: Path, image: DecodedImage, stamp: str) -> None:
        values = np.asarray(image.pixels.values)
        chunks = chunk_shape(values.shape)
        in_file = self._in_file(image)
        meta = {"format": FORMAT, "stamp": stamp, "shape": list(values.shape), "chunks": list(chunks),
                "slope": image.pixels.slope, "intercept": image.pixels.intercept, "window": image.window,
                "spacing": list(image.spacing), "in_file": in_file}
        try:
            with atomic_path(entry) as tmp, open(tmp, "wb") as f:
                f.write(_npy_header(values.dtype, values.size) if in_file is None else _npy_header(values.dtype, 0, 128))
                if in_file is None:
                    write_chunked(f, values, chunks)
                f.write(json.dumps(meta).encode())
        except OSError as e:
            if not self._write_failed:  # once per process: the run goes on, decoding uncached items each epoch
                log.warning("cannot write the image cache in %s (%s); images are decoded again at every read: free "
                            "disk space, set cache_dir to another folder, or cache=memory", self.folder, e.strerror or e)
            self._write_failed = True

    def _read(self, entry: Path, stamp: str, path: str) -> DecodedImage | None:
        try:
            with open(entry, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                known = self._layouts.get(entry)
                layout = known[1] if known is not None and known[0] == size else read_layout(f, stamp)
                self._layouts[entry] = (size, layout)
                if layout.in_file is not None:
                    values = FileRows(path, layout.in_file, layout.dtype, layout.shape)
                    return DecodedImage(Pixels(values, layout.slope, layout.intercept), layout.window, layout.spacing,
                                        layout.in_file)
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            if self.random_access and hasattr(mapped, "madvise"):
                mapped.madvise(mmap.MADV_RANDOM)  # a patch touches some chunks: read-ahead would read the rest
            return open_entry(mapped, layout)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            log.warning("cache entry %s is damaged (%s); decoding its image again", entry, type(e).__name__)
            return None


class Layout(NamedTuple):
    """What an entry file holds, from its header and trailer."""

    offset: int  # of the first value in the file
    dtype: np.dtype
    shape: tuple[int, ...]  # the image's
    chunks: tuple[int, ...]
    slope: float
    intercept: float
    window: tuple[float, float] | None
    spacing: tuple[float, ...]
    in_file: int | None  # the values lie in the item's own file at this offset (the entry holds none)


def read_layout(f, stamp: str | None = None) -> Layout:
    """The layout of an open entry file; ValueError for anything else (another format, or another stamp unless
    ``stamp`` is None)."""
    version = np.lib.format.read_magic(f)
    header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    count, fortran_order, dtype = header(f)
    offset = f.tell()
    f.seek(offset + math.prod(count) * dtype.itemsize)
    meta = json.loads(f.read())
    shape = tuple(int(n) for n in meta["shape"])
    in_file = None if meta.get("in_file") is None else int(meta["in_file"])
    if fortran_order or meta["format"] != FORMAT or (stamp is not None and meta["stamp"] != stamp) \
            or count != ((math.prod(shape),) if in_file is None else (0,)) or (in_file is not None and len(shape) != 2):
        raise ValueError("another entry")
    window = None if meta["window"] is None else (float(meta["window"][0]), float(meta["window"][1]))
    return Layout(offset, dtype, shape, tuple(int(c) for c in meta["chunks"]), float(meta["slope"]),
                  float(meta["intercept"]), window, tuple(float(s) for s in meta["spacing"]), in_file)


def open_entry(buffer, layout: Layout) -> DecodedImage:
    """The :class:`DecodedImage` of an entry held in ``buffer`` (a memory map of the file, or its bytes); its values
    are a :class:`ChunkedValues` over the buffer."""
    storage = np.frombuffer(buffer, layout.dtype, math.prod(layout.shape), layout.offset)
    values = ChunkedValues(storage, layout.shape, layout.chunks)
    return DecodedImage(Pixels(values, layout.slope, layout.intercept), layout.window, layout.spacing)
