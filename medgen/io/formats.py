"""NIfTI and PNG/JPEG/TIFF reading, in the axis convention of :mod:`medgen.io.reader`.

- :func:`read_nifti`: one 2D or 3D image per ``.nii``/``.nii.gz`` file, reoriented (nibabel ``io_orientation`` /
  ``apply_orientation``) to the closest LPS+ axes and transposed to ``(S, P, L)`` order, so a NIfTI and an axial
  DICOM series of the same data come out as the same array with the same spacing (mm; 1.0 where the file
  does not say).
- :func:`read_pil`: one 2D image through Pillow, in the orientation a viewer shows (EXIF), colour reduced to
  ITU-R BT.601 luminance as for DICOM; spacing 1.0.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from medgen.io.image import ImageInfo, ImageReadError, first_line, luminance

__all__ = ["read_nifti", "read_pil"]


def read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...], ImageInfo]:
    """A ``.nii``/``.nii.gz`` file -> ``(slices, rows, cols)`` (or ``(rows, cols)`` for one slice), spacing, facts."""
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
            path, reason, f"cannot read the NIfTI file ({type(exc).__name__}: {first_line(exc, path)})"
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


def read_pil(path: Path) -> tuple[np.ndarray, tuple[float, ...], ImageInfo]:
    """A PNG/JPEG/TIFF file -> ``(rows, cols)`` at its own sample type (colour: float64 luminance), spacing, facts."""
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
        raise ImageReadError(path, reason, f"cannot read the image ({first_line(exc, path)})") from None
    mode = img.mode
    if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img)
        bits = {"1": 1, "L": 8, "F": 32, "I": 32}.get(mode, 16)
    elif mode in ("LA", "La"):
        arr = np.asarray(img.getchannel(0))
        bits = 8
    else:  # RGB, RGBA, P, CMYK, YCbCr, ...: alpha ignored
        arr = luminance(np.asarray(img.convert("RGB")))
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
