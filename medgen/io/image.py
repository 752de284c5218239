"""What reading an image gives: the pixels (:class:`Pixels`), facts about them (:class:`ImageInfo`), and the
error for an image medgen cannot use (:class:`ImageReadError`, with a reason code from :data:`REASONS`).

Every reader (:mod:`medgen.io.dicom`, :mod:`medgen.io.formats`) returns these types; :mod:`medgen.io.reader`
is where callers read images.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medgen.errors import MedgenError

__all__ = ["ImageReadError", "ImageInfo", "Pixels", "REASONS", "first_line", "luminance"]

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
# ITU-R BT.601 luma weights, as used by Pillow's convert("L").
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


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


def first_line(exc: BaseException, path: Path | None = None) -> str:
    """A library error's text for an :class:`ImageReadError` detail: one line, at most 300 characters."""
    # Library messages describe codecs and sizes, never header values; keep them short, drop the absolute path
    # (reports name files relative to data_base_dir) and object addresses (so reports are reproducible).
    text = " ".join(str(exc).split())
    if path is not None:
        text = text.replace(str(path), path.name)
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<...>", text)
    return (text[:300] + "...") if len(text) > 300 else text


def luminance(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` RGB -> ITU-R BT.601 luminance (float64), the one-channel form of every colour image."""
    return rgb.astype(np.float64) @ _LUMA
