"""DICOM reading: a file (single- or multi-frame) or a folder holding one series, in presentation form.

:func:`read_dicom_file` and :func:`read_dicom_series` return the decoded values and their map to presentation
values (:class:`~medgen.io.image.Pixels`), the spacing and the facts of :class:`~medgen.io.image.ImageInfo`,
in the axis convention of :mod:`medgen.io.reader`.

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
"medgen[dicom]"`` brings permissively licensed ones. Failures raise :class:`~medgen.io.image.ImageReadError` whose
``reason`` is a short code (see ``REASONS``) and whose message names the file and never a header value.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medgen.io.discovery import VOLUME_MODALITIES, image_kind, is_candidate
from medgen.io.image import ImageInfo, ImageReadError, Pixels, first_line, luminance

__all__ = ["DICOM_EXTRA_HINT", "read_dicom_file", "read_dicom_series"]

DICOM_EXTRA_HINT = 'pip install "medgen[dicom]"'
# Projection radiographs: one image each, never slices of a volume (computed, digital, intra-oral, panoramic, mammography)
PROJECTION_MODALITIES = frozenset({"CR", "DX", "IO", "PX", "MG", "RG"})
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


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
                path, "undecodable", f"cannot decode {_ts_label(ts)} pixel data: {first_line(exc)}"
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
        return Pixels(luminance(arr))
    if photometric == "PALETTE COLOR":
        return Pixels(luminance(apply_color_lut(arr, ds)))
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


def read_dicom_file(path: Path) -> tuple[Pixels, tuple[float, ...], ImageInfo]:
    """A DICOM file -> ``(rows, cols)``, or ``(frames, rows, cols)`` for a multi-frame file (enhanced files sorted
    along the slice normal)."""
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


def read_dicom_series(folder: Path) -> tuple[Pixels, tuple[float, ...], ImageInfo]:
    """A folder holding one DICOM series -> (slices, rows, cols), sorted along the slice normal."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and is_candidate(p.name) and image_kind(p) == "dicom"]
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
        arr, spacing, info = read_dicom_file(slices[0][0])
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
