"""Public dental data arranged as medgen data folders, with a fixed held-out split.

Two public sources, cloned by the user (medgen downloads nothing):

- **Panoramics**: the UFBA-UESC subset in ``devichand579/Instance_seg_teeth``, folder
  ``Dataset/bb_u_net_dataset/panoramic_x_rays/``: JPEG panoramic radiographs resized to 512x512 (the aspect
  ratio is squashed), named ``cateN-XXXXX.jpg`` after the data set's ten categories. Categories 1-4 (all teeth
  present, with or without restorations or dental appliances) become ``dente``; categories 7-10 (missing
  teeth) become ``edente``: these jaws are *partially* edentulous, not toothless, so a model of ``edente`` learns
  gaps between teeth, not edentulous ridges. Categories 5 (dental implants) and 6 (more than 32 teeth) are left
  out: implants are neither class's anatomy (metal screws replacing missing teeth), and 6 holds supernumerary
  teeth, a rare anomaly that fits neither class.
- **CT**: ``CT_AVM.nii.gz`` in ``neurolabusc/niivue-images`` (BSD-2), one head CT angiogram, 256x242x154 voxels of
  0.72x0.72x1 mm, stored as 8-bit values with a scale. About 96% of its voxels are zero: it shows
  contrast-filled vessels and some bone, no soft tissue. A blank output already scores about 20 dB PSNR
  against it (in medgen's default window), so judge 3D reconstructions by SSIM, ``hf_ratio`` and the pictures
  too.

Split (committed under ``benchmarks/splits/``, read here, never re-drawn):

- ``panoramic_train.txt`` / ``panoramic_val.txt``: file names, one per line (``#`` starts a comment). Drawn
  once by :func:`draw_panoramic_split` (seed 0, 15% of each category held out): 303 training images (120
  dente, 183 edente), 54 held out (22 dente, 32 edente). Two files are byte-identical
  (``cate4-00101.jpg``, ``cate4-00107.jpg``): the second is left out. Two files show the same patient
  (``cate1-00044.jpg``, ``cate3-00009.jpg``; nearest pair by medgen's copy-check distance among the dente
  images): they share a split, so no held-out image has its patient in training.
- ``ct_slabs.json``: one volume cannot be split by patient, so it is split by position: axial slices
  ``[0, 114)`` train, ``[122, 154)`` (the 32 most superior slices) are held out for whole-volume evaluation, and
  the 8 slices between them are used by neither, so that no held-out slice has its immediate neighbour in
  training. Each slab is written as its own NIfTI file with the affine of its position; note that medgen's
  intensity window (``intensity_percentiles``) is then computed per slab.

Output, ready for medgen's config keys (``data_source="both"`` for the panoramics)::

    OUT/panoramic/train/{dente,edente}/*.jpg   -> data_base_dir
    OUT/panoramic/val/{dente,edente}/*.jpg     -> val_dir
    OUT/ct/train/edente/CT_AVM_z000-113.nii.gz -> data_base_dir (data_source="edente")
    OUT/ct/val/edente/CT_AVM_z122-153.nii.gz   -> val_dir

The CT sits in an ``edente/`` folder only because medgen's layout needs a class folder (and ``edente`` is the
default ``data_source``); it is a head CT, not a jaw, and the autoencoder does not use the class.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

from medgen.config import CLASSES
from medgen.errors import InvalidValueError, MissingInputError, OutputExistsError

__all__ = [
    "PANORAMIC_REPOSITORY",
    "PANORAMIC_FOLDER",
    "CT_REPOSITORY",
    "CATEGORY_CLASS",
    "panoramic_class",
    "draw_panoramic_split",
    "read_panoramic_split",
    "read_ct_slabs",
    "prepare_public_data",
    "summary_lines",
]

PANORAMIC_REPOSITORY = "https://github.com/devichand579/Instance_seg_teeth"
PANORAMIC_FOLDER = "Dataset/bb_u_net_dataset/panoramic_x_rays"
CT_REPOSITORY = "https://github.com/neurolabusc/niivue-images"
#: the split lists committed with medgen (in a clone of medgen, beside the package)
DEFAULT_SPLITS = Path(__file__).resolve().parents[2] / "benchmarks" / "splits"

EDENTE, DENTE = CLASSES
#: data-set category (the N of ``cateN-``) -> medgen class folder; categories not listed are left out
CATEGORY_CLASS = {**dict.fromkeys((1, 2, 3, 4), DENTE), **dict.fromkeys((7, 8, 9, 10), EDENTE)}
CT_CLASS = EDENTE  # a class folder the layout needs; the head CT belongs to neither class
SPLITS = ("train", "val")
_NAME = re.compile(r"cate(\d+)-\d+\.jpg")
# found once with medgen.metrics.copies' distance over all images (see the module docstring)
_DUPLICATES = frozenset({"cate4-00107.jpg"})  # byte-identical to cate4-00101.jpg
_SAME_PATIENT = (("cate1-00044.jpg", "cate3-00009.jpg"),)


def _category(name: str) -> int | None:
    match = _NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def panoramic_class(name: str) -> str | None:
    """The class folder of a panoramic file name (``cate8-00120.jpg`` -> ``edente``); None for a file that is
    left out (categories 5 and 6, or a name outside the data set's scheme)."""
    return CATEGORY_CLASS.get(_category(name))


def draw_panoramic_split(names: list[str], seed: int = 0, val_fraction: float = 0.15) -> dict[str, list[str]]:
    """Draw the held-out split once (its result is committed; :func:`prepare_public_data` reads that).

    Each category's usable names (sorted, duplicates left out) are shuffled with ``random.Random(f"{seed}-cate{N}")``
    and ``round(val_fraction * count)`` of them (at least one) are held out; images of one patient then join the
    split of the first of them. Depends only on the names, not on the order they are given in.

    Returns:
        ``{"train": [...], "val": [...]}``, each sorted.
    """
    by_category: dict[int, list[str]] = {}
    for name in sorted(set(names) - _DUPLICATES):
        if panoramic_class(name) is not None:
            by_category.setdefault(_category(name), []).append(name)
    split = {}
    for category, members in sorted(by_category.items()):
        random.Random(f"{seed}-cate{category}").shuffle(members)
        n_val = max(1, round(val_fraction * len(members)))
        split.update(dict.fromkeys(members[:n_val], "val") | dict.fromkeys(members[n_val:], "train"))
    for group in _SAME_PATIENT:
        present = sorted(n for n in group if n in split)
        for name in present[1:]:
            split[name] = split[present[0]]
    return {s: sorted(n for n, where in split.items() if where == s) for s in SPLITS}


def _list_file(split_dir: Path, name: str) -> Path:
    path = split_dir / name
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist; --split-lists must name a folder holding {name}")
    return path


def read_panoramic_split(split_dir: str | os.PathLike) -> dict[str, list[str]]:
    """The committed panoramic split: ``{"train": names, "val": names}`` from ``panoramic_{train,val}.txt``.

    Raises:
        InvalidValueError: a name outside categories 1-4 and 7-10, or in both lists.
    """
    split = {}
    for s in SPLITS:
        path = _list_file(Path(split_dir), f"panoramic_{s}.txt")
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        split[s] = [line for line in lines if line]
        for name in split[s]:
            if panoramic_class(name) is None:
                raise InvalidValueError(f"{path}: {name} is not a panoramic of categories 1-4 or 7-10")
    both = sorted(set(split["train"]) & set(split["val"]))
    if both:
        raise InvalidValueError(f"{both[0]} is listed for training and for validation in {split_dir}")
    return split


def read_ct_slabs(split_dir: str | os.PathLike) -> dict:
    """The committed CT split, ``ct_slabs.json``: ``file``, ``shape``, ``axis`` and the ``[start, stop)`` slice
    ranges ``train`` and ``val``."""
    path = _list_file(Path(split_dir), "ct_slabs.json")
    slabs = json.loads(path.read_text())
    depth = slabs["shape"][slabs["axis"]]
    (a, b), (c, d) = slabs["train"], slabs["val"]
    if not (0 <= a < b <= depth and 0 <= c < d <= depth and (b <= c or d <= a)):
        raise InvalidValueError(f"{path}: train {slabs['train']} and val {slabs['val']} must be disjoint ranges within 0-{depth}")
    return slabs


def _fresh_folder(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise OutputExistsError(f"{folder} already holds files; remove it or choose another output folder")


def _checked_panoramics(clone: Path, split_dir: Path) -> dict[str, list[str]]:
    """The committed split, after checking that the clone holds every listed file."""
    split = read_panoramic_split(split_dir)
    source = clone / PANORAMIC_FOLDER
    for s in SPLITS:
        for name in split[s]:
            if not (source / name).is_file():
                raise MissingInputError(
                    f"{name} (listed in panoramic_{s}.txt) is not in {source}; "
                    f"--panoramics must be a clone of {PANORAMIC_REPOSITORY}"
                )
    return split


def _checked_ct(clone: Path, split_dir: Path):
    """The CT volume (nibabel image, not yet read) and the committed slabs, after checking its shape."""
    import nibabel as nib

    slabs = read_ct_slabs(split_dir)
    source = clone / slabs["file"]
    if not source.is_file():
        raise MissingInputError(f"{slabs['file']} is not in {clone}; --ct must be a clone of {CT_REPOSITORY}")
    volume = nib.load(source)
    if list(volume.shape) != list(slabs["shape"]):
        raise InvalidValueError(
            f"{source} has shape {list(volume.shape)}, not the {slabs['shape']} the committed CT split was chosen for; "
            f"use the file of {CT_REPOSITORY}"
        )
    return volume, slabs


def _write_panoramics(clone: Path, split: dict[str, list[str]], out: Path) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for s in SPLITS:
        counts[s] = {DENTE: 0, EDENTE: 0}
        for name in split[s]:
            label = panoramic_class(name)
            (out / s / label).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(clone / PANORAMIC_FOLDER / name, out / s / label / name)
            counts[s][label] += 1
    return counts


def _write_ct(volume, slabs: dict, out: Path) -> dict[str, dict]:
    import nibabel as nib
    import numpy as np

    stem = slabs["file"].removesuffix(".gz").removesuffix(".nii")
    stored = np.asarray(volume.dataobj.get_unscaled())
    written = {}
    for s in SPLITS:
        start, stop = slabs[s]
        index = [slice(None)] * volume.ndim
        index[slabs["axis"]] = slice(start, stop)
        shift = np.eye(4)
        shift[slabs["axis"], 3] = start  # the slab's first voxel sits where it sat in the volume
        # the stored values with the volume's scale: saving the scaled values would re-quantise them per slab
        affine = volume.affine @ shift
        slab = nib.Nifti1Image(stored[tuple(index)], affine, volume.header)
        slab.set_qform(affine, int(volume.header["qform_code"]))  # the volume's codes, not "aligned"
        slab.set_sform(affine, int(volume.header["sform_code"]))
        slab.header.set_slope_inter(volume.dataobj.slope, volume.dataobj.inter)
        path = out / s / CT_CLASS / f"{stem}_z{start:03d}-{stop - 1:03d}.nii.gz"  # first and last slice
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(slab, path)
        written[s] = {"file": path.relative_to(out.parent).as_posix(), "shape": list(slab.shape)}
    return written


def prepare_public_data(
    out: str | os.PathLike,
    panoramics: str | os.PathLike | None = None,
    ct: str | os.PathLike | None = None,
    split_dir: str | os.PathLike = DEFAULT_SPLITS,
) -> dict:
    """Arrange clones of the public repositories as medgen data folders under ``out`` (see the module docstring).

    Everything is checked before anything is written: each listed panoramic is in the clone, the CT has the
    shape its committed slabs were chosen for, and ``out/panoramic`` / ``out/ct`` are new or empty.

    Args:
        out: output folder; ``out/panoramic`` and ``out/ct`` are written.
        panoramics: a clone (working tree) of ``Instance_seg_teeth``, or None to skip the panoramics.
        ct: a clone of ``niivue-images``, or None to skip the CT.
        split_dir: the folder of split lists (default: the ones committed with medgen).

    Returns:
        ``{"panoramic": {split: {class: count}} or None, "ct": {split: {"file", "shape"}} or None}``.

    Raises:
        InvalidValueError: neither source given, a bad split list, or a CT of another shape.
        MissingInputError: a listed file or the CT is not in the clone (the message names the file and the
            repository to clone), or a split list is missing.
        OutputExistsError: ``out/panoramic`` or ``out/ct`` already holds files.
    """
    if panoramics is None and ct is None:
        raise InvalidValueError("name at least one source: --panoramics CLONE and/or --ct CLONE")
    out, split_dir = Path(out), Path(split_dir)
    split = _checked_panoramics(Path(panoramics), split_dir) if panoramics is not None else None
    volume = _checked_ct(Path(ct), split_dir) if ct is not None else None
    for name, source in (("panoramic", panoramics), ("ct", ct)):
        if source is not None:
            _fresh_folder(out / name)
    return {
        "panoramic": _write_panoramics(Path(panoramics), split, out / "panoramic") if split is not None else None,
        "ct": _write_ct(*volume, out / "ct") if volume is not None else None,
    }


def summary_lines(summary: dict) -> list[str]:
    """What :func:`prepare_public_data` wrote, as lines to print."""
    lines = []
    if summary["panoramic"] is not None:
        for s in SPLITS:
            counts = summary["panoramic"][s]
            per_class = ", ".join(f"{c} {n}" for c, n in counts.items())
            lines.append(f"panoramic/{s}: {sum(counts.values())} images ({per_class})")
    if summary["ct"] is not None:
        for s in SPLITS:
            slab = summary["ct"][s]
            lines.append(f"{slab['file']}: {'x'.join(map(str, slab['shape']))} voxels")
    return lines
