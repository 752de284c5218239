"""One image reader for every part of medgen: DICOM (file, multi-frame, series folder), NIfTI, PNG/JPEG/TIFF.

:func:`read_image` returns the pixels as a radiologist would see them (before windowing), as float32,
channel-first ``(1, *spatial)``, plus the spacing of the spatial axes in the same order.

Axis convention (slowest to fastest, identical for every format):

- 2D: ``(rows, cols)``: top-to-bottom, left-to-right as displayed.
- 3D: ``(slices, rows, cols)``, with slices ordered by increasing position along the slice normal.
  For DICOM the normal is ``row_cosines x col_cosines`` from ImageOrientationPatient, so an axial
  series goes from inferior to superior, rows from anterior to posterior, cols from patient right to
  left (the DICOM LPS patient frame). NIfTI volumes are reoriented (nibabel ``io_orientation`` /
  ``apply_orientation``) to the closest LPS+ axes and transposed to ``(S, P, L)`` order, so a NIfTI and
  an axial DICOM series of the same data come out as the same array with the same spacing.
- Spacing is in mm for DICOM/NIfTI (1.0 where a file does not say) and 1.0 for PNG/JPEG/TIFF.

DICOM presentation form, in this order:

1. pydicom decodes the pixels (BitsStored and PixelRepresentation honoured: signed and 12-in-16-bit data).
2. Colour (RGB, YBR_* via ``pydicom.pixels.convert_color_space``, PALETTE COLOR via
   ``apply_color_lut``) is reduced to one channel by ITU-R BT.601 luminance
   ``0.299 R + 0.587 G + 0.114 B`` (the same weights Pillow uses for PNG/JPEG).
3. Grayscale pixels go through the modality LUT: a Modality LUT Sequence via
   ``pydicom.pixels.apply_modality_lut``; RescaleSlope/Intercept with the same rule (both present) but
   computed in float32 and fused with step 4 for speed. Enhanced multi-frame files take the values from
   the per-frame or shared functional groups.
4. MONOCHROME1 is inverted so that bone/enamel is bright, as in MONOCHROME2:
   ``y = lo + hi - x`` where ``lo, hi`` are the modality-LUT outputs of the smallest and largest stored
   values that BitsStored/PixelRepresentation allow (for a linear rescale this equals rescaling the
   inverted stored value ``vmin + vmax - v``). The mapping is fixed per bit depth, not per image, so two
   images with the same stored value get the same output. PresentationLUTShape is not applied (for
   DX, INVERSE merely restates MONOCHROME1); VOI LUT / windowing is not applied (display only).

Compressed transfer syntaxes are decoded by whatever pydicom plugins are installed; ``pip install
"medgen[dicom]"`` brings permissively licensed ones. Failures raise :class:`ImageReadError` whose
``reason`` is a short code (see ``REASONS``) and whose message names the file and never a header value.
"""

from __future__ import annotations

import gzip
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medgen.errors import MedgenError, MissingInputError

__all__ = [
    "ImageReadError",
    "ImageInfo",
    "Pixels",
    "REASONS",
    "read_image",
    "read_image_and_info",
    "read_pixels",
    "inspect_image",
    "find_images",
    "image_kind",
    "DICOM_EXTRA_HINT",
]

DICOM_EXTRA_HINT = 'pip install "medgen[dicom]"'

# Reason codes an ImageReadError (and check-data) can carry, with a one-line meaning.
REASONS = {
    "empty": "the file is empty (0 bytes)",
    "truncated": "the file ends early (incomplete copy or download)",
    "not_dicom": "not a DICOM file and not a known image format",
    "no_pixel_data": "DICOM object without an image (structured report, DICOMDIR, presentation state, ...)",
    "unsupported_transfer_syntax": "no installed decoder handles this DICOM compression",
    "undecodable": "the installed decoders failed on this pixel data",
    "unreadable": "the file could not be parsed",
    "multiple_series": "the folder holds more than one DICOM series",
    "inconsistent_series": "the slices of the series cannot be stacked into one volume",
    "not_a_volume": "a folder of separate 2D radiographs read as one volume (projection images, or no series/positions)",
    "unsupported_shape": "an image layout medgen does not read (e.g. 4D, several channels)",
}

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
# Projection radiographs: one image each, never slices of a volume (computed, digital, intra-oral, panoramic, mammography)
PROJECTION_MODALITIES = frozenset({"CR", "DX", "IO", "PX", "MG", "RG"})
# ITU-R BT.601 luma weights, as used by Pillow's convert("L").
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_SERIES_SAMPLE = 32  # files whose headers find_images reads to decide whether a folder is one volume


class ImageReadError(MedgenError, ValueError):
    """An image that medgen cannot use.

    Args:
        path: the file or folder that failed.
        reason: short code from ``REASONS`` (``"truncated"``, ``"not_dicom"``, ...).
        detail: what was found and what to do; never contains DICOM header values.
    """

    def __init__(self, path: str | os.PathLike, reason: str, detail: str) -> None:
        self.path = Path(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {detail}")

    def __reduce__(self):  # keep path/reason/detail when the error crosses a process pool
        return (type(self), (self.path, self.reason, self.detail))


@dataclass(frozen=True)
class ImageInfo:
    """Non-identifying facts about one image item, for reports.

    ``shape`` and ``spacing`` describe the array :func:`read_image` returns, without the channel axis.
    ``bits_stored`` is DICOM BitsStored, the PNG/TIFF bit depth, or None (NIfTI: see ``dtype``).
    ``dtype`` is the stored sample type before conversion to float32. ``values_offset`` is where
    :func:`read_pixels`' values lie in the file, row after row, when they are the file's own bytes (an
    uncompressed single-frame DICOM image in native byte order, so any rows of them can be read from the file
    itself); None otherwise. It is left out of :meth:`as_dict`. ``photometric_interpretation`` is the
    DICOM value, or the Pillow mode (``L``, ``I;16``, ``RGB``, ...) for PNG/JPEG/TIFF.
    """

    kind: str  # "dicom", "dicom_series", "nifti" or "image" (PNG/JPEG/TIFF)
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    dtype: str
    bits_stored: int | None = None
    modality: str | None = None
    photometric_interpretation: str | None = None
    transfer_syntax: str | None = None
    files: int = 1  # files read (slices of a series folder)
    values_offset: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"], d["spacing"] = list(self.shape), list(self.spacing)
        del d["values_offset"]
        return d


@dataclass(frozen=True)
class Pixels:
    """One image as decoded, before conversion to float32: ``values`` at their own width and the linear map to
    presentation values, ``presentation = values * slope + intercept`` (float32, see :meth:`presentation`).

    ``values`` are the stored samples (e.g. uint16, int16) when the modality LUT and the MONOCHROME1 inversion
    are one linear map for the whole image; otherwise (colour, a Modality LUT Sequence, frames or slices with
    different rescales) they are the presentation values themselves, as floats, with ``slope=1, intercept=0``.
    The shape is the spatial shape (no channel axis).
    """

    values: np.ndarray
    slope: float = 1.0
    intercept: float = 0.0

    def presentation(self, values: np.ndarray | None = None) -> np.ndarray:
        """The presentation values of ``self.values`` (or of a crop of them) as float32, computed exactly as
        :func:`read_image` computes them, so a crop of the result equals the result of a crop."""
        v = self.values if values is None else values
        # float32 throughout: pydicom's apply_modality_lut computes the same rescale in float64, which made
        # reading several times slower than decoding for uncompressed files
        if self.slope != 1.0:
            out = np.multiply(v, np.float32(self.slope), dtype=np.float32)
        else:
            out = v.astype(np.float32)
        if self.intercept != 0.0:
            out += np.float32(self.intercept)
        return out

    @property
    def linear(self) -> bool:
        """True when ``values`` are not yet presentation values (a rescale or an inversion is still to apply)."""
        return self.slope != 1.0 or self.intercept != 0.0

    @staticmethod
    def stack(parts: Sequence["Pixels"]) -> "Pixels":
        """Frames or slices stacked on a new first axis: one linear map when they all share it, else floats."""
        first = parts[0]
        if all(p.slope == first.slope and p.intercept == first.intercept and p.values.dtype == first.values.dtype
               for p in parts):
            return Pixels(np.stack([p.values for p in parts]), first.slope, first.intercept)
        return Pixels(np.stack([p.presentation() for p in parts]))


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read one image item in presentation form.

    Args:
        path: a DICOM file (single- or multi-frame), a folder holding one DICOM series, a NIfTI file
            (``.nii``/``.nii.gz``) or a PNG/JPEG/TIFF file.

    Returns:
        ``(array, spacing)``: float32 array of shape ``(1, rows, cols)`` or ``(1, slices, rows, cols)``
        (see the module docstring for the axis convention) and the spacing of the spatial axes in the
        same order.

    Raises:
        ImageReadError: the item cannot be used; ``.reason`` says why.
    """
    array, spacing, _ = read_image_and_info(path)
    return array, spacing


def inspect_image(path: str | os.PathLike) -> ImageInfo:
    """Read ``path`` like :func:`read_image` and return only non-identifying facts about it.

    Raises:
        ImageReadError: the item cannot be used.
    """
    return read_image_and_info(path)[2]


def read_image_and_info(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, ...], ImageInfo]:
    """:func:`read_image` and :func:`inspect_image` in one read (what check-data and datasets need).

    Returns:
        ``(array (1, *spatial) float32, spacing, ImageInfo)``.
    """
    pixels, spacing, info = read_pixels(path)
    return np.ascontiguousarray(pixels.presentation(), dtype=np.float32)[None], spacing, info


def read_pixels(path: str | os.PathLike) -> tuple[Pixels, tuple[float, ...], ImageInfo]:
    """:func:`read_image_and_info` before the conversion to float32: the decoded values at their own width and
    their map to presentation values (what the decoded-image cache stores). ``pixels.presentation()[None]``
    is exactly :func:`read_image`'s array.

    Raises:
        ImageReadError: the item cannot be used.
    """
    path = Path(path)
    kind = image_kind(path)
    if kind == "dicom_series":
        return _read_dicom_series(path)
    if kind == "nifti":
        arr, spacing, info = _read_nifti(path)
    elif kind == "image":
        arr, spacing, info = _read_pil(path)
    else:
        return _read_dicom_file(path)
    return Pixels(arr), spacing, info


def image_kind(path: str | os.PathLike) -> str:
    """The reader :func:`read_image` uses for ``path``: "dicom_series" (a folder), "nifti", "image"
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
        candidates = [root_path / f for f in sorted(files) if _is_candidate(f)]
        dicom_like = [p for p in candidates if image_kind(p) == "dicom"]
        if len(dicom_like) >= 2 and _is_volume_series_folder(dicom_like):
            items.append(root_path)
            candidates = [p for p in candidates if p not in set(dicom_like)]
        items.extend(candidates)
    return sorted(items)


# --------------------------------------------------------------------------------------------------
# Discovery helpers
# --------------------------------------------------------------------------------------------------


def _is_candidate(name: str) -> bool:
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


# --------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------


def _ts_label(ts: Any) -> str:
    """Transfer syntax as 'name (UID)': a standard identifier, not patient data."""
    if ts is None:
        return "unknown transfer syntax"
    name = getattr(ts, "name", "") or ""
    return f"{name} ({ts})" if name and name != str(ts) else str(ts)


def _read_dataset(path: Path):
    """dcmread with medgen's error reasons; returns a dataset that has pixel data and a transfer syntax."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(path, "unreadable", f"cannot open the file ({exc.strerror})") from None
    if size == 0:
        raise ImageReadError(path, "empty", "the file is empty (0 bytes); copy it again from the source")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about vendor quirks; errors are what matter here
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            ds = None
        except (EOFError, OSError) as exc:
            raise ImageReadError(path, "truncated", f"the DICOM file ends early ({type(exc).__name__})") from None
        except Exception as exc:
            raise ImageReadError(
                path, "unreadable", f"the DICOM header cannot be parsed ({type(exc).__name__})"
            ) from None
        if ds is None:
            # No 'DICM' preamble: accept legacy headerless (ACR-NEMA style) files only if they parse as an image.
            try:
                ds = pydicom.dcmread(path, force=True)
                ok = "PixelData" in ds and "Rows" in ds and "Columns" in ds
            except Exception:
                ok = False
            if not ok:
                raise ImageReadError(
                    path,
                    "not_dicom",
                    "not a DICOM file (no 'DICM' marker) and not a NIfTI/PNG/JPEG/TIFF file by its suffix",
                )
    if _cut_short(ds):
        raise ImageReadError(path, "truncated", "the DICOM file ends in the middle of an element (file cut short?)")
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        if len(ds) == 0:
            raise ImageReadError(path, "truncated", "the DICOM file ends inside its header")
        # Files without a transfer syntax in their meta header were written with the encoding pydicom detected.
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        if little is False:
            from pydicom.uid import ExplicitVRBigEndian

            meta.TransferSyntaxUID = ExplicitVRBigEndian
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels:
        sop = meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID")
        image_object = str(getattr(sop, "name", "")).endswith("Image Storage") or "Rows" in ds
        if image_object and str(sop) != _DICOMDIR_SOP_CLASS:
            raise ImageReadError(
                path, "truncated", "the DICOM file is an image object but its pixel data is missing (file cut short?)"
            )
        what = getattr(sop, "name", None) or "unknown object type"
        raise ImageReadError(
            path,
            "no_pixel_data",
            f"DICOM without pixel data ({what}): not an image (structured report, DICOMDIR, presentation "
            "state, ...); remove it from the image folder",
        )
    return ds


def _cut_short(ds) -> bool:
    """True when the last element read is shorter than its declared length: pydicom stops quietly at EOF."""
    if len(ds) == 0:
        return False
    raw = ds.get_item(list(ds.keys())[-1])  # the raw element: its declared length and the bytes actually read
    length, value = getattr(raw, "length", None), getattr(raw, "value", None)
    return isinstance(value, bytes) and length is not None and length != 0xFFFFFFFF and len(value) < length


def _decode(path: Path, ds) -> tuple[np.ndarray, str]:
    """Decoded pixels (frames first if several) and the photometric interpretation they are in."""
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise ImageReadError(
            path,
            "unsupported_transfer_syntax",
            f"pixel data encoded with {_ts_label(ts)}, which no pydicom decoder supports; convert the file "
            "to an uncompressed transfer syntax (e.g. dcmtk 'dcmdjpeg'/'dcmconv +te')",
        ) from None
    if not decoder.is_available:
        raise ImageReadError(
            path,
            "unsupported_transfer_syntax",
            f"pixel data encoded with {_ts_label(ts)} but no decoder for it is installed; run "
            f"{DICOM_EXTRA_HINT} (permissively licensed pylibjpeg/pyjpegls/python-gdcm decoders)",
        )
    if (
        ts == "1.2.840.10008.1.2.4.51"
        and int(ds.get("BitsStored", 8)) > 8
        and "pylibjpeg" not in decoder.available_plugins
    ):
        raise ImageReadError(
            path,
            "unsupported_transfer_syntax",
            f"pixel data encoded with {_ts_label(ts)} at 12 bits: no permissively licensed decoder reads it "
            "(pylibjpeg-libjpeg does, under GPL-3); or convert the file, e.g. with dcmtk 'dcmdjpeg'",
        )
    # Uncompressed data is taken as a view of the file's bytes: pydicom would copy every image to clear the bits
    # above BitsStored, which are almost always clear already (checked, and cleared the same way, below).
    native = not ts.is_encapsulated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            arr, meta = decoder.as_array(ds, as_rgb=False, **({"view_only": True, "correct_unused_bits": False} if native else {}))
            if native:
                arr = _clear_unused_bits(arr, ds)
        except ValueError as exc:
            if "less than expected" in str(exc) or "fewer bytes" in str(exc):
                raise ImageReadError(
                    path, "truncated", "the pixel data is shorter than the image size (file cut short?)"
                ) from None
            raise ImageReadError(
                path,
                "undecodable",
                f"cannot decode {_ts_label(ts)} pixel data ({type(exc).__name__}: a malformed image attribute?)",
            ) from None
        except (RuntimeError, AttributeError, NotImplementedError) as exc:
            # pydicom's decoder errors name plugins, codecs and missing elements, not element values
            raise ImageReadError(
                path, "undecodable", f"cannot decode {_ts_label(ts)} pixel data: {_first_line(exc)}"
            ) from None
        except Exception as exc:  # e.g. a malformed value in the pixel description; its text could quote it
            raise ImageReadError(
                path,
                "undecodable",
                f"cannot decode {_ts_label(ts)} pixel data ({type(exc).__name__}: a malformed image attribute?)",
            ) from None
    return arr, str(meta.get("photometric_interpretation") or ds.get("PhotometricInterpretation", "MONOCHROME2"))


def _clear_unused_bits(arr: np.ndarray, ds) -> np.ndarray:
    """``arr`` with the bits above BitsStored cleared (sign-extended for signed data) as pydicom's
    ``correct_unused_bits`` does, copying only when some value has them set."""
    allocated, stored = int(ds.get("BitsAllocated", 0) or 0), int(ds.get("BitsStored", 0) or 0)
    if arr.dtype.kind not in "ui" or not 0 < stored < allocated or arr.size == 0:
        return arr
    if arr.dtype.kind == "u":
        if int(arr.max()) < 1 << stored:
            return arr
    elif -(1 << (stored - 1)) <= int(arr.min()) and int(arr.max()) < 1 << (stored - 1):
        return arr
    shift = arr.dtype.itemsize * 8 - stored
    arr = np.left_shift(arr, shift)  # a copy: the view is read-only
    np.right_shift(arr, shift, out=arr)
    return arr


def _first_line(exc: BaseException, path: Path | None = None) -> str:
    # Library messages describe codecs and sizes, never header values; keep them short, drop the absolute path
    # (reports name files relative to data_base_dir) and object addresses (so reports are reproducible).
    text = " ".join(str(exc).split())
    if path is not None:
        text = text.replace(str(path), path.name)
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<...>", text)
    return (text[:300] + "...") if len(text) > 300 else text


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ _LUMA


def _stored_range(ds) -> tuple[int, int] | None:
    bits = ds.get("BitsStored")
    if bits is None:
        return None
    bits = int(bits)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _functional_item(ds, frame: int | None, sequence: str, inner: str):
    """The (per-frame, else shared) functional-group item ``sequence[0].inner[0]`` of an enhanced file."""
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        per_frame = ds.PerFrameFunctionalGroupsSequence
        if frame < len(per_frame) and sequence in per_frame[frame] and per_frame[frame][sequence].value:
            item = per_frame[frame][sequence][0]
            if inner in item or not inner:
                return item
    if "SharedFunctionalGroupsSequence" in ds and ds.SharedFunctionalGroupsSequence:
        shared = ds.SharedFunctionalGroupsSequence[0]
        if sequence in shared and shared[sequence].value:
            return shared[sequence][0]
    return None


def _lut_source(ds, frame: int | None):
    """The dataset holding the modality LUT / rescale for ``frame`` (top level or functional groups)."""
    if ds.get("ModalityLUTSequence") or ("RescaleSlope" in ds and "RescaleIntercept" in ds):
        return ds
    item = _functional_item(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
    if item is not None and "RescaleSlope" in item and "RescaleIntercept" in item:
        return item
    return ds


def _to_presentation(path: Path, ds, arr: np.ndarray, photometric: str, frames: int) -> Pixels:
    """Colour -> luminance, modality LUT, MONOCHROME1 inversion. ``arr`` is (frames, rows, cols[, 3]) or 2D.

    Returns the pixels of the same spatial shape: stored values and their linear map (grayscale), or float64
    luminance (colour).
    """
    from pydicom.pixels import apply_color_lut, convert_color_space

    spp = int(ds.get("SamplesPerPixel", 1))
    if spp == 3 or photometric.startswith(("RGB", "YBR")):
        if photometric.startswith("YBR"):
            arr = convert_color_space(arr, photometric, "RGB", per_frame=False)
        return Pixels(_luminance(arr))
    if photometric == "PALETTE COLOR":
        return Pixels(_luminance(apply_color_lut(arr, ds)))
    if spp != 1:
        raise ImageReadError(path, "unsupported_shape", f"{spp} samples per pixel; medgen reads 1 (gray) or 3 (colour)")

    if frames > 1 and arr.ndim == 3:
        return Pixels.stack([_modality_and_polarity(arr[i], ds, _lut_source(ds, i), photometric) for i in range(frames)])
    return _modality_and_polarity(arr, ds, _lut_source(ds, 0), photometric)


def _modality_and_polarity(stored: np.ndarray, ds, src, photometric: str) -> Pixels:
    """Modality LUT then MONOCHROME1 inversion of one frame (or of all frames sharing ``src``).

    A linear rescale and the inversion are one affine map, ``y = a * v + b`` then ``y' = lo + hi - y``: the
    stored values are returned with that map (applied in float32 by :meth:`Pixels.presentation`). A Modality
    LUT Sequence goes through pydicom and gives float32 presentation values.
    """
    from pydicom.pixels import apply_modality_lut

    mono1 = photometric == "MONOCHROME1"
    limits = _stored_range(ds)
    if src.get("ModalityLUTSequence"):
        result = np.asarray(apply_modality_lut(stored, src), dtype=np.float32)
        if mono1:
            if limits is None:
                lo, hi = float(np.nanmin(result)), float(np.nanmax(result))
            else:
                ends = np.asarray(apply_modality_lut(np.array(limits), src), dtype=np.float64)
                lo, hi = float(ends.min()), float(ends.max())
            result = np.float32(lo + hi) - result
        return Pixels(result)
    # the same rule as apply_modality_lut: rescale only when both values are present
    if "RescaleSlope" in src and "RescaleIntercept" in src:
        slope, intercept = float(src.RescaleSlope), float(src.RescaleIntercept)
    else:
        slope, intercept = 1.0, 0.0
    if mono1:
        if limits is None:  # float pixel data: no stored range, invert within the data's own range
            lo, hi = slope * float(np.nanmin(stored)) + intercept, slope * float(np.nanmax(stored)) + intercept
        else:
            ends = (slope * limits[0] + intercept, slope * limits[1] + intercept)
            lo, hi = min(ends), max(ends)
        slope, intercept = -slope, lo + hi - intercept
    return Pixels(stored, slope, intercept)


def _pixel_spacing(ds) -> tuple[float, float]:
    """Row and column spacing in mm: the first usable of the spacing attributes, else 1 mm. Zero, negative or
    non-numeric values (real CR files carry ``PixelSpacing`` 0.000\\0.000) count as absent."""

    def usable(value) -> tuple[float, float] | None:
        try:
            pair = (float(value[0]), float(value[1])) if value is not None and len(value) == 2 else None
        except (TypeError, ValueError):
            return None
        return pair if pair is not None and all(np.isfinite(v) and v > 0 for v in pair) else None

    for key in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        found = usable(ds.get(key))
        if found:
            return found
    item = _functional_item(ds, 0, "PixelMeasuresSequence", "PixelSpacing")
    found = usable(item.get("PixelSpacing")) if item is not None else None
    return found or (1.0, 1.0)


def _slice_normal(orientation: Sequence[float]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    return np.cross(row, col)


def _nominal_slice_spacing(ds) -> float:
    for source in (ds, _functional_item(ds, 0, "PixelMeasuresSequence", "")):
        if source is None:
            continue
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            value = source.get(key)
            if value not in (None, "") and float(value) > 0:
                return float(value)
    return 1.0


def _spacing_from_positions(path: Path, positions: np.ndarray) -> float:
    gaps = np.diff(positions)
    if np.any(np.abs(gaps) < 1e-4):
        raise ImageReadError(
            path,
            "inconsistent_series",
            "two or more slices share the same position along the slice normal (duplicated slices?); keep "
            "one copy of each slice",
        )
    return float(np.median(gaps))


def _dicom_info(ds, kind: str, shape, spacing, photometric: str, files: int = 1) -> ImageInfo:
    ts = ds.file_meta.get("TransferSyntaxUID")
    return ImageInfo(
        kind=kind,
        shape=tuple(int(s) for s in shape),
        spacing=tuple(float(s) for s in spacing),
        dtype=f"{'int' if int(ds.get('PixelRepresentation', 0)) else 'uint'}{int(ds.get('BitsAllocated', 0))}",
        bits_stored=int(ds.BitsStored) if "BitsStored" in ds else None,
        modality=str(ds.get("Modality")) if ds.get("Modality") else None,
        photometric_interpretation=str(ds.get("PhotometricInterpretation", "")) or photometric,
        transfer_syntax=getattr(ts, "name", None) or (str(ts) if ts else None),
        files=files,
    )


def _read_dicom_file(path: Path) -> tuple[Pixels, tuple[float, ...], ImageInfo]:
    ds = _read_dataset(path)
    arr, photometric = _decode(path, ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    out = _to_presentation(path, ds, arr, photometric, frames)
    row_sp, col_sp = _pixel_spacing(ds)
    if frames == 1:
        spacing: tuple[float, ...] = (row_sp, col_sp)
    else:
        values, slice_sp = _order_frames(path, ds, out.values, frames)
        out, spacing = replace(out, values=values), (slice_sp, row_sp, col_sp)
    info = _dicom_info(ds, "dicom", out.values.shape, spacing, photometric)
    if frames == 1 and out.values is arr:
        info = replace(info, values_offset=_offset_in_file(path, ds, arr))
    return out, spacing, info


def _offset_in_file(path: Path, ds, arr: np.ndarray) -> int | None:
    """Where ``arr`` lies in ``path``, when it is a C-ordered native-endian view of the pixel data's bytes as they
    are in the file (uncompressed data taken as a view; not a deflated file, whose offsets are the inflated
    stream's); None otherwise. The values' first and last bytes are compared with the file's."""
    elem = ds["PixelData"] if "PixelData" in ds else None
    value, tell = getattr(elem, "value", None), getattr(elem, "file_tell", None)
    if (not isinstance(value, (bytes, bytearray)) or tell is None or not arr.flags.c_contiguous
            or not arr.dtype.isnative or arr.size == 0 or getattr(ds.file_meta.get("TransferSyntaxUID"), "is_deflated", True)):
        return None
    start = arr.__array_interface__["data"][0] - np.frombuffer(value, np.uint8).__array_interface__["data"][0]
    if start < 0 or start + arr.nbytes > len(value):
        return None
    raw = memoryview(arr).cast("B")
    edge = min(64, arr.nbytes)
    try:
        with open(path, "rb") as f:
            f.seek(tell + start)
            head = f.read(edge)
            f.seek(tell + start + arr.nbytes - edge)
            tail = f.read(edge)
    except OSError:
        return None
    return tell + start if head == raw[:edge] and tail == raw[-edge:] else None


def _order_frames(path: Path, ds, volume: np.ndarray, frames: int) -> tuple[np.ndarray, float]:
    """Sort the frames of an enhanced multi-frame file along the slice normal when positions are given."""
    orient_item = _functional_item(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
    orientation = (orient_item.get("ImageOrientationPatient") if orient_item is not None else None) or ds.get(
        "ImageOrientationPatient"
    )
    positions = []
    for i in range(frames):
        item = _functional_item(ds, i, "PlanePositionSequence", "ImagePositionPatient")
        if item is None or item.get("ImagePositionPatient") is None:
            positions = []
            break
        positions.append([float(v) for v in item.ImagePositionPatient])
    if orientation is None or len(positions) != frames or "PerFrameFunctionalGroupsSequence" not in ds:
        return volume, _nominal_slice_spacing(ds)  # file order, nominal spacing
    along = np.asarray(positions) @ _slice_normal(orientation)
    order = np.argsort(along, kind="stable")
    return volume[order], _spacing_from_positions(path, along[order])


def _slice_error(folder: Path, path: Path, err: ImageReadError) -> ImageReadError:
    # The item is the folder (reports name items), the detail names the slice file that failed.
    return ImageReadError(folder, err.reason, f"slice {path.name}: {err.detail}")


def _read_dicom_series(folder: Path) -> tuple[Pixels, tuple[float, ...], ImageInfo]:
    """A folder holding one DICOM series -> (slices, rows, cols), sorted along the slice normal."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and _is_candidate(p.name) and image_kind(p) == "dicom"]
    slices = []  # (path, dataset) of image files
    for path in files:
        try:
            slices.append((path, _read_dataset(path)))
        except ImageReadError as err:
            if err.reason in ("no_pixel_data", "not_dicom"):
                continue  # DICOMDIR, reports, stray non-DICOM files next to the slices are not part of the volume
            raise _slice_error(folder, path, err) from None
    if not slices:
        raise ImageReadError(folder, "no_pixel_data", "the folder holds no DICOM image files")

    series: dict[Any, list] = {}
    for path, ds in slices:
        series.setdefault(ds.get("SeriesInstanceUID"), []).append((path, ds))
    if len(series) > 1:
        # Listed by series number, modality, file count and one file name: never UIDs or free text.
        lines = []
        for members in sorted(series.values(), key=lambda m: str(m[0][1].get("SeriesNumber", ""))):
            ds0 = members[0][1]
            lines.append(
                f"series number {ds0.get('SeriesNumber', '?')} ({ds0.get('Modality', '?')}, {len(members)} files, "
                f"e.g. {members[0][0].name})"
            )
        raise ImageReadError(
            folder,
            "multiple_series",
            f"the folder holds {len(series)} DICOM series: "
            + "; ".join(lines)
            + ". Put each series in its own folder.",
        )
    if len(slices) == 1:
        arr, spacing, info = _read_dicom_file(slices[0][0])
        return arr, spacing, replace(info, kind="dicom_series")

    have_positions = all(
        ds.get("ImagePositionPatient") is not None and ds.get("ImageOrientationPatient") is not None for _, ds in slices
    )
    modalities = sorted({str(ds.get("Modality", "") or "?") for _, ds in slices})
    projection = [m for m in modalities if m in PROJECTION_MODALITIES]
    volume_kind = all(m in VOLUME_MODALITIES for m in modalities) and None not in series
    if projection or not (have_positions or volume_kind):
        # Radiographs (one projection each) or images of no known series and position: separate 2D images.
        why = f"modality {', '.join(projection)}" if projection else "no series and no slice positions"
        raise ImageReadError(
            folder,
            "not_a_volume",
            f"the folder holds {len(slices)} separate 2D images ({why}), not the slices of one volume; read its "
            "files one by one (as a data folder of 2D images does), or give a series with slice positions",
        )

    sizes = {(int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)) for _, ds in slices}
    if len(sizes) > 1 or next(iter(sizes))[2] > 1:
        raise ImageReadError(
            folder,
            "inconsistent_series",
            f"the series mixes slice sizes or multi-frame files ({len(sizes)} different layouts); a volume needs "
            "single-frame slices of one size",
        )

    if have_positions:
        normal = _slice_normal(slices[0][1].ImageOrientationPatient)
        along = np.array([np.dot([float(v) for v in ds.ImagePositionPatient], normal) for _, ds in slices])
        order = np.argsort(along, kind="stable")
        slice_sp = _spacing_from_positions(folder, along[order])
    elif all(ds.get("InstanceNumber") is not None for _, ds in slices):
        order = np.argsort([int(ds.InstanceNumber) for _, ds in slices], kind="stable")
        slice_sp = _nominal_slice_spacing(slices[0][1])
    else:
        raise ImageReadError(
            folder,
            "inconsistent_series",
            "the slices have neither ImagePositionPatient/ImageOrientationPatient nor InstanceNumber, so their "
            "order is unknown",
        )

    planes = []
    photometric = "MONOCHROME2"
    for index in order:
        path, ds = slices[index]
        try:
            arr, photometric = _decode(path, ds)
            planes.append(_to_presentation(path, ds, arr, photometric, 1))
        except ImageReadError as err:
            raise _slice_error(folder, path, err) from None
    volume = Pixels.stack(planes)
    spacing = (slice_sp, *_pixel_spacing(slices[0][1]))
    info = _dicom_info(slices[0][1], "dicom_series", volume.values.shape, spacing, photometric, len(slices))
    return volume, spacing, info


# --------------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------------


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...], ImageInfo]:
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty", "the file is empty (0 bytes); copy it again from the source")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        reason = "truncated" if _looks_truncated(path, exc) else "unreadable"
        raise ImageReadError(
            path, reason, f"cannot read the NIfTI file ({type(exc).__name__}: {_first_line(exc, path)})"
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise ImageReadError(
            path, "unsupported_shape", f"NIfTI with shape {tuple(data.shape)}; medgen reads one 2D or 3D image per file"
        )
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    # Reorient to the closest LPS+ (DICOM patient) axes, then (z, y, x) = (slices, rows, cols).
    transform = ornt_transform(io_orientation(img.affine), axcodes2ornt(("L", "P", "S")))
    data = apply_orientation(data, transform)
    zooms = zooms[np.argsort(transform[:, 0])]  # voxel size of each output axis
    volume = np.transpose(data, (2, 1, 0))
    spacing = tuple(float(z) if z > 0 else 1.0 for z in zooms[::-1])
    if 1 in volume.shape and volume.ndim == 3 and volume.shape.count(1) == 1:
        axis = volume.shape.index(1)  # a single-slice NIfTI is a 2D image
        volume = np.take(volume, 0, axis=axis)
        spacing = tuple(s for i, s in enumerate(spacing) if i != axis)
    info = ImageInfo(kind="nifti", shape=volume.shape, spacing=spacing, dtype=str(img.get_data_dtype()))
    return volume, spacing, info


def _looks_truncated(path: Path, exc: BaseException) -> bool:
    if isinstance(exc, EOFError) or "Expected" in str(exc):
        return True
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
        except EOFError:
            return True
        except Exception:
            return False
    return False


# --------------------------------------------------------------------------------------------------
# PNG / JPEG / TIFF
# --------------------------------------------------------------------------------------------------


def _read_pil(path: Path) -> tuple[np.ndarray, tuple[float, ...], ImageInfo]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty", "the file is empty (0 bytes); copy it again from the source")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)  # the orientation a viewer shows
    except UnidentifiedImageError:
        raise ImageReadError(path, "unreadable", "not a PNG/JPEG/TIFF image despite its suffix") from None
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() or "broken" in str(exc).lower() else "unreadable"
        raise ImageReadError(path, reason, f"cannot read the image ({_first_line(exc, path)})") from None
    mode = img.mode
    if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img)
        bits = {"1": 1, "L": 8, "F": 32, "I": 32}.get(mode, 16)
    elif mode in ("LA", "La"):
        arr = np.asarray(img.getchannel(0))
        bits = 8
    else:  # RGB, RGBA, P, CMYK, YCbCr, ...: alpha ignored
        arr = _luminance(np.asarray(img.convert("RGB")))
        bits = 8
    if arr.ndim != 2:
        raise ImageReadError(path, "unsupported_shape", f"image with shape {arr.shape}; expected a 2D image")
    dtype = str(np.asarray(img).dtype) if mode not in ("RGB", "RGBA", "P") else "uint8"
    info = ImageInfo(
        kind="image",
        shape=arr.shape,
        spacing=(1.0, 1.0),
        dtype=dtype,
        bits_stored=bits,
        photometric_interpretation=mode,
    )
    return arr, (1.0, 1.0), info
