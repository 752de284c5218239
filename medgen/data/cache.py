"""The decoded-image disk cache: one memory-mapped ``.npy`` file per item, shared by every rank.

An entry holds :func:`medgen.data.transforms.decode`'s :class:`~medgen.data.transforms.DecodedImage`: the
decoded values at their own width (uint16 for a 16-bit radiograph, int16 for CT) followed by a JSON trailer
with their map to presentation values, the intensity window and the spacing. A training patch is cut out of the
memory map, so it reads only its own bytes (about its own size in pages; the kernel is told not to read ahead),
and only the patch is converted to float and windowed.

- Named by the item's path and change stamp (:func:`medgen.io.discovery.item_signature`, taken at every read):
  an edited file or series slice is decoded again at its next read and the old entry is never served.
- Written atomically by whichever process needs it first (:func:`medgen.io.files.atomic_path`); other ranks
  and loader workers read it. Two writers of one entry write the same bytes.
- A damaged entry (cut short, overwritten, another format) is decoded again and rewritten; if the cache folder
  cannot be written (disk full), training goes on with the decoded image and a warning.

``np.load(path, mmap_mode="r")`` opens an entry as an ordinary array (the trailer follows the array data).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
from pathlib import Path
from typing import Callable

import numpy as np

from medgen.data.transforms import DecodedImage
from medgen.io.discovery import item_signature
from medgen.io.files import atomic_path
from medgen.io.reader import Pixels

log = logging.getLogger("medgen.data")

FORMAT = 3  # what an entry holds; part of the folder name, so entries of another format are never read


class DiskImageCache:
    """Decoded images on disk, one entry per item and change stamp.

    Args:
        folder: the cache folder (created).
        decode: makes an item's :class:`DecodedImage` from its path (raises ImageReadError when it cannot).
        random_access: read entries in small pieces (training patches): tell the kernel not to read ahead.
    """

    def __init__(self, folder: str | os.PathLike, decode: Callable[[str], DecodedImage], random_access: bool = True):
        self.folder, self.decode, self.random_access = Path(folder), decode, random_access
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_failed = False
        # entry file -> (size, layout): parsing an .npy header (ast.literal_eval) cost more than cutting the patch.
        # Entries are named by content, so a layout stays right while the file keeps its size.
        self._layouts: dict[Path, tuple[int, tuple]] = {}

    def entry_path(self, path: str, stamp: str) -> Path:
        return self.folder / (hashlib.sha1(f"{path}\0{stamp}".encode()).hexdigest() + ".npy")

    def get(self, path: str) -> DecodedImage:
        """The item's decoded image: from its entry, or decoded now and its entry written."""
        stamp = item_signature(path)
        if stamp is None:  # gone: the reader says how
            return self.decode(path)
        image = self._read(self.entry_path(path, stamp), stamp)
        if image is None:
            image = self.decode(path)
            self.put(path, image, stamp)
        return image

    def put(self, path: str, image: DecodedImage, stamp: str) -> None:
        """Write the entry of ``path`` (whose change stamp was ``stamp`` when it was decoded) atomically."""
        entry = self.entry_path(path, stamp)
        meta = {"format": FORMAT, "stamp": stamp, "slope": image.pixels.slope, "intercept": image.pixels.intercept,
                "window": image.window, "spacing": list(image.spacing)}
        try:
            with atomic_path(entry) as tmp, open(tmp, "wb") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(image.pixels.values), allow_pickle=False)
                f.write(json.dumps(meta).encode())
        except OSError as e:
            if not self._write_failed:  # once per process: the run goes on, decoding uncached items each epoch
                log.warning("cannot write the image cache in %s (%s); images are decoded again at every read: free "
                            "disk space, set cache_dir to another folder, or cache=memory", self.folder, e.strerror or e)
            self._write_failed = True

    def _read(self, entry: Path, stamp: str) -> DecodedImage | None:
        try:
            with open(entry, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                known = self._layouts.get(entry)
                layout = known[1] if known is not None and known[0] == size else self._layout(f, stamp)
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._layouts[entry] = (size, layout)
            offset, shape, dtype, slope, intercept, window, spacing = layout
            if self.random_access and hasattr(mapped, "madvise"):
                mapped.madvise(mmap.MADV_RANDOM)  # a patch touches a few rows per slice: read-ahead would read the rest
            values = np.frombuffer(mapped, dtype, int(np.prod(shape)), offset).reshape(shape)
            return DecodedImage(Pixels(values, slope, intercept), window, spacing)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            log.warning("cache entry %s is damaged (%s); decoding its image again", entry, type(e).__name__)
            return None

    @staticmethod
    def _layout(f, stamp: str) -> tuple:
        """Where the values are in an entry file and what its trailer says; ValueError for anything else."""
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = header(f)
        offset = f.tell()
        f.seek(offset + int(np.prod(shape)) * dtype.itemsize)
        meta = json.loads(f.read())
        if fortran_order or meta["format"] != FORMAT or meta["stamp"] != stamp:
            raise ValueError("another entry")
        window = None if meta["window"] is None else (float(meta["window"][0]), float(meta["window"][1]))
        return (offset, shape, dtype, float(meta["slope"]), float(meta["intercept"]), window,
                tuple(float(s) for s in meta["spacing"]))
