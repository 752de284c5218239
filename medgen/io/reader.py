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

Each format has its module: :mod:`medgen.io.dicom` (presentation form: modality LUT, MONOCHROME1, colour),
:mod:`medgen.io.formats` (NIfTI, PNG/JPEG/TIFF); :func:`medgen.io.discovery.image_kind` says which one reads a
path. Failures raise :class:`~medgen.io.image.ImageReadError` whose ``reason`` is a short code (see
``REASONS``) and whose message names the file and never a header value.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medgen.io.dicom import read_dicom_file, read_dicom_series
from medgen.io.discovery import image_kind
from medgen.io.formats import read_nifti, read_pil
from medgen.io.image import REASONS, ImageInfo, ImageReadError, Pixels

# the entry points, and the types they return and raise
__all__ = ["read_image", "read_image_and_info", "read_pixels", "inspect_image", "ImageInfo", "ImageReadError", "Pixels",
           "REASONS"]


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
        return read_dicom_series(path)
    if kind == "nifti":
        arr, spacing, info = read_nifti(path)
    elif kind == "image":
        arr, spacing, info = read_pil(path)
    else:
        return read_dicom_file(path)
    return Pixels(arr), spacing, info

