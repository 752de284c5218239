"""Write images (reconstructions, samples, exports) as PNG, NIfTI or DICOM, in the reader's axis convention.

``write_image(array, path)`` takes what :func:`medgen.data.read_image` returns, ``(C, *spatial)`` with
``(rows, cols)`` or ``(slices, rows, cols)`` spatial axes, and writes it so that ``read_image`` gives the
same array and spacing back (exactly for integer data, up to quantisation for float data in PNG/DICOM).

DICOM export is a Secondary Capture (multi-frame grayscale word SC for 3D) with fresh UIDs from
``pydicom.uid.generate_uid``, ImageType ``DERIVED\\SECONDARY``, ConversionType ``SYN`` for synthetic
images, and no identifying attributes: the patient/study attributes the IOD requires are present but
empty, and from a ``reference`` dataset only the geometry/pixel-description attributes in
``REFERENCE_ALLOW_LIST`` are copied.

``FORMATS`` are the output formats the commands offer (``--format``) and their suffixes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medgen.errors import InvalidValueError
from medgen.io.files import atomic_path

__all__ = ["write_image", "format_suffix", "FORMATS", "REFERENCE_ALLOW_LIST"]

# The output formats medgen's commands offer (``--format``) and the suffix each is written with.
FORMATS = {"nii": ".nii.gz", "png": ".png", "dcm": ".dcm"}

# Attributes copied from a reference DICOM: geometry and acquisition kind only, nothing that identifies anyone.
REFERENCE_ALLOW_LIST = (
    "Modality",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImageOrientationPatient",
    "PatientOrientation",
    "ImageLaterality",
)
# Type 2 attributes of the patient/study/series modules: required by the IOD, written empty.
_EMPTY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def format_suffix(fmt: str) -> str:
    """The file suffix of the output format ``fmt`` (one of :data:`FORMATS`); an unknown format is refused."""
    if fmt not in FORMATS:
        raise InvalidValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def write_image(
    array: Any,
    path: str | os.PathLike,
    spacing: tuple[float, ...] | None = None,
    reference: str | os.PathLike | Any | None = None,
    *,
    synthetic: bool = False,
    bit_depth: int | None = None,
    value_range: tuple[float, float] | None = None,
) -> Path:
    """Write one image, choosing the format by the suffix of ``path``.

    Args:
        array: ``(C, *spatial)`` numpy array or torch tensor, C = 1 (PNG also takes C = 3, RGB);
            spatial ``(rows, cols)`` or, for NIfTI/DICOM, ``(slices, rows, cols)``.
        path: ``.png`` (2D, 8 or 16-bit), ``.nii``/``.nii.gz`` (spacing in the affine, LPS axes as the
            reader expects) or ``.dcm`` (Secondary Capture, 16-bit).
        spacing: spacing of the spatial axes (mm), reader order; default: from ``reference`` or 1.0.
        reference: a DICOM path or pydicom Dataset whose geometry (``REFERENCE_ALLOW_LIST``) the DICOM
            export copies; ignored for other formats.
        synthetic: mark the DICOM as a synthetic image (ConversionType SYN, ImageComments say so).
        bit_depth: PNG bit depth, 8 or 16; default 8 for uint8/bool data, else 16.
        value_range: for float data in PNG/DICOM, the values mapped to 0 and the largest code
            (default: the array's min and max). Integer data is written as is.

    Returns:
        the path written (written to a temporary file first, then renamed, so it is never partial).

    Raises:
        ValueError: unknown suffix, wrong shape, or integer values the format cannot hold.
    """
    path = Path(path)
    arr = _to_numpy(array)
    if arr.ndim not in (3, 4):
        raise InvalidValueError(
            f"write_image({path}): expected (C, rows, cols) or (C, slices, rows, cols), got shape {arr.shape}"
        )
    name = path.name.lower()
    if name.endswith(".png"):
        writer = _write_png
    elif name.endswith((".nii", ".nii.gz")):
        writer = _write_nifti
    elif name.endswith(".dcm"):
        writer = _write_dicom
    else:
        raise InvalidValueError(f"write_image({path}): unknown suffix; use .png, .nii, .nii.gz or .dcm")
    if spacing is not None and len(spacing) != arr.ndim - 1:
        raise InvalidValueError(f"write_image({path}): spacing {tuple(spacing)} does not match {arr.ndim - 1} spatial axes")
    with atomic_path(path) as tmp:  # a crash never leaves a half-written image behind
        writer(arr, tmp, spacing, reference, synthetic, bit_depth, value_range)
    return path


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor (or MONAI MetaTensor) without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _single_channel(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.shape[0] != 1:
        raise InvalidValueError(f"write_image({path}): expected 1 channel, got {arr.shape[0]} (shape {arr.shape})")
    return arr[0]


def _quantise(arr: np.ndarray, bits: int, value_range: tuple[float, float] | None, path: Path):
    """Integer codes in [0, 2**bits - 1] plus (slope, intercept) so that value = code * slope + intercept."""
    top = 2**bits - 1
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        if arr.size and (arr.min() < 0 or arr.max() > top):
            raise InvalidValueError(
                f"write_image({path}): integer values in [{arr.min()}, {arr.max()}] do not fit {bits}-bit unsigned; "
                "pass float data with value_range, or use .nii"
            )
        return arr.astype(np.uint16 if bits > 8 else np.uint8), 1.0, 0.0
    data = np.nan_to_num(arr.astype(np.float64))
    lo, hi = value_range if value_range is not None else (float(data.min()), float(data.max()))
    slope = (hi - lo) / top if hi > lo else 1.0
    codes = np.clip(np.rint((data - lo) / slope), 0, top)
    return codes.astype(np.uint16 if bits > 8 else np.uint8), slope, lo


def _write_png(arr, path, spacing, reference, synthetic, bit_depth, value_range) -> None:
    from PIL import Image

    if arr.ndim != 3:
        raise InvalidValueError(f"write_image({path}): PNG holds 2D images, got shape {arr.shape}")
    bits = bit_depth or (8 if arr.dtype in (np.uint8, np.bool_) else 16)
    if bits not in (8, 16):
        raise InvalidValueError(f"write_image({path}): PNG bit_depth must be 8 or 16, got {bits}")
    if arr.shape[0] == 3:  # RGB previews: 8-bit only in Pillow
        codes, _, _ = _quantise(np.moveaxis(arr, 0, -1), 8, value_range, path)
        Image.fromarray(codes, mode="RGB").save(path, format="PNG")
        return
    codes, _, _ = _quantise(_single_channel(arr, path), bits, value_range, path)
    Image.fromarray(codes).save(path, format="PNG")


def _write_nifti(arr, path, spacing, reference, synthetic, bit_depth, value_range) -> None:
    import nibabel as nib

    image = _single_channel(arr, path)
    if image.ndim == 2:
        image = image[None]  # one slice
        spacing = (1.0, *spacing) if spacing is not None else None
    sz, sy, sx = (float(s) for s in (spacing or (1.0, 1.0, 1.0)))
    # The reader's (slices, rows, cols) are the (S, P, L) axes; NIfTI voxels are (x, y, z) with a RAS affine.
    data = np.ascontiguousarray(np.transpose(image, (2, 1, 0)))
    if data.dtype == np.float64 or data.dtype == bool:
        data = data.astype(np.float32)
    affine = np.diag([-sx, -sy, sz, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    # nibabel picks the format from the file name; the temporary name keeps the .nii/.nii.gz ending.
    nib.save(img, str(path))


def _write_dicom(arr, path, spacing, reference, synthetic, bit_depth, value_range) -> None:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    image = _single_channel(arr, path)
    is_volume = image.ndim == 3
    codes, slope, intercept = _quantise(image, 16, value_range, path)

    ds = Dataset()
    if reference is not None:
        ref = reference if isinstance(reference, Dataset) else pydicom.dcmread(reference, stop_before_pixels=True)
        for keyword in REFERENCE_ALLOW_LIST:
            if keyword in ref and ref[keyword].value not in (None, ""):
                ds[keyword] = ref[keyword]
    sop_class = MultiFrameGrayscaleWordSecondaryCaptureImageStorage if is_volume else SecondaryCaptureImageStorage
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()  # random, never derived from the reference's UIDs
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    for keyword in _EMPTY_TYPE2:
        setattr(ds, keyword, "")
    ds.PatientIdentityRemoved = "YES"
    ds.Modality = ds.get("Modality") or "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "SYN" if synthetic else "WSD"
    ds.BurnedInAnnotation = "NO"
    ds.ImageComments = (
        "Synthetic image generated by medgen; not an image of a patient"
        if synthetic
        else "Derived image written by medgen"
    )
    ds.DerivationDescription = "medgen " + ("generative model sample" if synthetic else "processed image")
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = f"{intercept:.10g}"
        ds.RescaleType = "US"  # unspecified units
    if spacing is not None:
        ds.PixelSpacing = [f"{float(spacing[-2]):.6g}", f"{float(spacing[-1]):.6g}"]
        if is_volume:
            ds.SpacingBetweenSlices = ds.SliceThickness = f"{float(spacing[0]):.6g}"
    ds.set_pixel_data(codes.astype(np.uint16), "MONOCHROME2", 16)
    if is_volume:
        # The MF SC IOD needs a frame increment attribute: the slice positions along the normal, in mm.
        step = float(spacing[0]) if spacing is not None else float(ds.get("SpacingBetweenSlices") or 1.0)
        ds.SliceLocationVector = [f"{i * step:.6g}" for i in range(codes.shape[0])]
        ds.FrameIncrementPointer = pydicom.tag.Tag("SliceLocationVector")

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
