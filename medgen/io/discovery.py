"""The one way in for data: a config, or a path given on the command line, becomes image items.

An item is ``{"image": path, "label": class}``, the form MONAI dict datasets take: ``path`` is a file or a
DICOM series folder (one volume), ``label`` the class folder it came from (``edente`` / ``dente``).

- :func:`discover_items` turns a config into its training and validation items (the reproducible split).
- :func:`data_source` turns what a user typed (a config JSON, a data folder, a series folder or one image
  file) into items plus the folder they are named relative to. ``check-data``, training, ``reconstruct``,
  ``encode`` and the bundles all go through these two, so one config or folder means the same images
  everywhere; relative paths in a config resolve as :func:`medgen.config.load_config` says.
- :func:`find_images` lists the image items under a folder (files, and DICOM series folders as one volume
  each); :func:`image_kind` says which reader :func:`medgen.io.read_image` uses for a path.
- :func:`item_signature` is the change stamp of an item (every file of a series), shared by the decoded-image
  cache and the data-check cache.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgen.config import CLASSES, ConfigError, RunConfig, load_config
from medgen.errors import MissingInputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# Sidecar/document files that live next to images and are never images themselves: find_images ignores them.
IGNORED_SUFFIXES = frozenset(
    ".txt .json .csv .tsv .md .rst .xml .html .htm .pdf .log .yaml .yml .ini .cfg .doc .docx .xls .xlsx "
    ".py .sh .bat .db .sqlite .pkl .pt .pth .ckpt".split()
)
# Files without ImagePositionPatient count as slices of a volume only for these modalities (CBCT is "CT"):
# same-sized files of one DX/IO/PX/NM... series are separate 2D images (e.g. an intra-oral full-mouth series).
VOLUME_MODALITIES = frozenset({"CT", "MR", "PT"})
_SERIES_SAMPLE = 32  # files whose headers find_images reads to decide whether a folder is one volume


def image_kind(path: str | os.PathLike) -> str:
    """The reader :func:`medgen.io.read_image` uses for ``path``: "dicom_series" (a folder), "nifti", "image"
    (PNG/JPEG/TIFF) or "dicom" (any other file: DICOM files often have no suffix)."""
    path = Path(path)
    if path.is_dir():
        return "dicom_series"
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(PIL_SUFFIXES):
        return "image"
    return "dicom"


def find_images(folder: str | os.PathLike) -> list[Path]:
    """The image items under ``folder``, sorted.

    An item is a file of a known kind (NIfTI, PNG/JPEG/TIFF, or a possible DICOM file: ``.dcm``, no
    suffix, or any suffix not in ``IGNORED_SUFFIXES``), or a folder whose DICOM files are mostly slices of
    volume series (two or more single-frame, same-sized images of one series, with ImagePositionPatient
    or of modality CT/MR/PT, so not DX/IO/PX images): that folder is ONE item and its DICOM files are not
    listed (read_image then reports a folder holding several series). Hidden files and folders are
    skipped. Files that are not readable images are still listed (check-data reports why).
    Works for ``data_base_dir/{edente,dente}/...`` with one file per 2D image or one folder per volume.

    Args:
        folder: root of the tree to scan.

    Returns:
        paths of the items, files and series folders alike.

    Raises:
        FileNotFoundError: ``folder`` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"{folder}: no such folder (expected a folder of images)")
    items: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        root_path = Path(root)
        candidates = [root_path / f for f in sorted(files) if is_candidate(f)]
        dicom_like = [p for p in candidates if image_kind(p) == "dicom"]
        if len(dicom_like) >= 2 and _is_volume_series_folder(dicom_like):
            items.append(root_path)
            candidates = [p for p in candidates if p not in set(dicom_like)]
        items.extend(candidates)
    return sorted(items)


def is_candidate(name: str) -> bool:
    """True when a file called ``name`` may be an image item: not hidden, and a known image suffix, ``.dcm``, no
    suffix or any suffix not in ``IGNORED_SUFFIXES``."""
    if name.startswith("."):
        return False
    lower = name.lower()
    if lower.endswith(NIFTI_SUFFIXES + PIL_SUFFIXES):
        return True
    return Path(lower).suffix not in IGNORED_SUFFIXES


def _is_volume_series_folder(files: Sequence[Path]) -> bool:
    """True when most of ``files`` are slices of volume series: >= 2 same-sized single-frame images of one
    series that have ImagePositionPatient or a volume modality (CT, MR, PT) (see find_images)."""
    import pydicom

    if len(files) > _SERIES_SAMPLE:
        # Headers cost ~0.5 ms each: decide on an evenly spaced sample (read_image checks the whole folder later).
        step = len(files) / _SERIES_SAMPLE
        files = [files[int(i * step)] for i in range(_SERIES_SAMPLE)]
    groups: dict[Any, list[tuple[int, int]]] = {}
    tags = ["SeriesInstanceUID", "NumberOfFrames", "Rows", "Columns", "Modality", "ImagePositionPatient"]
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
        except Exception:  # not DICOM / broken: it stays a file item and check-data reports it
            continue
        if "Rows" not in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1:
            continue
        if "ImagePositionPatient" not in ds and ds.get("Modality") not in VOLUME_MODALITIES:
            continue
        groups.setdefault(ds.get("SeriesInstanceUID"), []).append((int(ds.Rows), int(ds.Columns)))
    # Volume slices must be the bulk of the folder: a few same-series files among many separate images stay files.
    in_volumes = sum(len(v) for v in groups.values() if len(v) >= 2 and len(set(v)) == 1)
    return in_volumes * 2 > len(files)


def images_in(folder: str | os.PathLike, label: str | None) -> list[dict]:
    """Every image item under ``folder`` (see :func:`find_images`), labelled ``label``."""
    return [{"image": str(p), "label": label} for p in find_images(folder)]


def discover_items(cfg: RunConfig) -> tuple[list[dict], list[dict]]:
    """Training and validation items for ``data_source``.

    Validation comes from ``val_dir`` when set (its edente/ dente/ subfolders, or the folder itself),
    otherwise a ``1 - train_split`` share of each class, drawn reproducibly from ``seed``.

    Raises:
        ConfigError: ``data_base_dir`` is not a folder, a class folder of ``data_source`` holds no images, or
            ``val_dir`` holds none.
    """
    base = Path(cfg.data_base_dir)
    if not base.is_dir():
        raise ConfigError(
            f"data_base_dir={cfg.data_base_dir} is not a folder; point it at the folder that holds edente/ and dente/ "
            "(a relative path is taken from the current folder, then from the config file's folder)"
        )
    train, val = [], []
    for label in cfg.classes:
        folder = base / label
        items = images_in(folder, label) if folder.is_dir() else []
        if not items:
            present = [c for c in CLASSES if c != label and (base / c).is_dir() and images_in(base / c, c)]
            holds_files = folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))
            if present:
                fix = f'set data_source="{present[0]}" to train on {base / present[0]} alone, or add images to {folder}'
            elif holds_files:  # real data that medgen cannot use: never suggest writing demo data there
                fix = f"it holds files but none medgen reads as an image; `medgen check-data {folder}` says why"
            else:
                fix = "put DICOM/NIfTI/PNG files there, or try medgen on synthetic data: `medgen demo-data DIR`"
            raise ConfigError(f"no images found in {folder} (data_source={cfg.data_source!r}); {fix}")
        if cfg.val_dir is None:
            random.Random(f"{cfg.seed}-{label}").shuffle(items)
            n_val = max(1, round(len(items) * (1 - cfg.train_split))) if len(items) > 1 else 0
            val += items[:n_val]
            items = items[n_val:]
        train += items
    if cfg.val_dir is not None:
        vdir = Path(cfg.val_dir)
        if not vdir.is_dir():
            raise ConfigError(f"val_dir={cfg.val_dir} is not a folder; point it at a folder of validation images, or set it to null")
        subdirs = [vdir / c for c in cfg.classes if (vdir / c).is_dir()]
        val = [it for d in subdirs for it in images_in(d, d.name)] if subdirs else images_in(vdir, "val")
        if not val:
            raise ConfigError(f"val_dir={cfg.val_dir} holds no images")
    return train, val


@dataclass
class DataSource:
    """The images a config or a command-line path names.

    Attributes:
        base: the folder items are named relative to in reports and output files.
        train, val: items; for a folder or a file every item is in ``train`` and ``val`` is empty.
        config: the loaded config when the source was one, else None.
    """

    base: Path
    train: list[dict]
    val: list[dict]
    config: RunConfig | None = None

    @property
    def items(self) -> list[dict]:
        return [*self.train, *self.val]


def folder_items(folder: str | os.PathLike) -> list[dict]:
    """A data folder's items: its ``edente/`` and ``dente/`` images (labelled so) when it has those
    subfolders, otherwise every image under it (labelled with the folder's name)."""
    folder = Path(folder)
    classes = [folder / c for c in CLASSES if (folder / c).is_dir()]
    if classes:
        return [it for d in classes for it in images_in(d, d.name)]
    return images_in(folder, folder.resolve().name or ".")


def data_source(source: str | os.PathLike, overrides: list[str] = (), cls: type | None = None) -> DataSource:
    """Items from a config JSON (its training and validation split, exactly as training would use), a data
    folder (:func:`folder_items`; a DICOM series folder is one volume) or one image file.

    Args:
        source: the path the user gave.
        overrides: ``--set`` overrides for a config.
        cls: the config class for a config (None: picked from its sections, see :func:`load_config`).

    Raises:
        ConfigError: ``source`` does not exist, or a config names no usable data.
    """
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".json":
        cfg = load_config(path, list(overrides), cls=cls)
        train, val = discover_items(cfg)
        return DataSource(Path(cfg.data_base_dir), train, val, cfg)
    if path.is_dir():
        items = folder_items(path)
        if not items:
            raise ConfigError(f"no images found under {path}; give a folder of DICOM/NIfTI/PNG files, an image file or a config JSON")
        return DataSource(path, items, [])
    if path.is_file():
        return DataSource(path.parent, [{"image": str(path), "label": None}], [])
    raise ConfigError(f"{path} does not exist; give an image file, a folder of images or a config JSON")


def item_signature(path: str | os.PathLike) -> str | None:
    """A stamp that changes when an item's content may have changed: size and mtime of a file, or of every
    file of a DICOM series folder (so one slice edited in place is noticed). None when it does not exist."""
    path = Path(path)
    try:
        if path.is_dir():
            h = hashlib.sha1()
            for entry in sorted(os.scandir(path), key=lambda e: e.name):
                if entry.is_file() and not entry.name.startswith("."):
                    st = entry.stat()
                    h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            return "d" + h.hexdigest()
        st = path.stat()
        return f"{st.st_size}-{st.st_mtime_ns}"
    except OSError:
        return None


def relative_name(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """An item's name relative to ``base`` (POSIX separators) for reports, logs and output files: a path the
    user chose, never a header value. Items outside ``base`` are named by ``..`` steps. A link inside ``base``
    (a subset of a data set made of symbolic links) is named where it is, not where it points."""
    for p, b in ((Path(os.path.abspath(path)), Path(os.path.abspath(base))), (Path(path).resolve(), Path(base).resolve())):
        try:
            return p.relative_to(b).as_posix()
        except ValueError:
            pass
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()  # e.g. a val_dir outside data_base_dir
