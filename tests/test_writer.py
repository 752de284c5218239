"""medgen.io.writer: files written in the reader's convention come back the same; DICOM exports leak nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medgen.io import inspect_image, read_image, write_image

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent
CT_SERIES = TEST_FILES / "dicomdirtests" / "98892001" / "CT5N"


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_3d_and_2d(tmp_path, suffix):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(1, 4, 5, 6)).astype(np.float32)
    out = write_image(vol, tmp_path / f"v{suffix}", spacing=(2.5, 0.5, 0.75))
    arr, spacing = read_image(out)
    np.testing.assert_array_equal(arr, vol)
    assert spacing == pytest.approx((2.5, 0.5, 0.75))

    img = rng.normal(size=(1, 5, 7)).astype(np.float32)
    arr, spacing = read_image(write_image(img, tmp_path / f"i{suffix}", spacing=(0.3, 0.4)))
    np.testing.assert_array_equal(arr, img)
    assert spacing == pytest.approx((0.3, 0.4))


def test_dicom_series_to_nifti_keeps_array_and_spacing(tmp_path):
    vol, spacing = read_image(CT_SERIES)
    arr, spacing2 = read_image(write_image(vol, tmp_path / "ct.nii.gz", spacing=spacing))
    np.testing.assert_array_equal(arr, vol)
    assert spacing2 == pytest.approx(spacing, rel=1e-6)


def test_png_16_bit_and_8_bit(tmp_path):
    data = (np.arange(32 * 32, dtype=np.uint32).reshape(1, 32, 32) * 61 % 65536).astype(np.uint16)
    arr, _ = read_image(write_image(data, tmp_path / "x16.png"))
    np.testing.assert_array_equal(arr, data.astype(np.float32))
    assert inspect_image(tmp_path / "x16.png").bits_stored == 16

    small = (data % 256).astype(np.uint8)
    arr, _ = read_image(write_image(small, tmp_path / "x8.png"))
    np.testing.assert_array_equal(arr, small.astype(np.float32))
    assert inspect_image(tmp_path / "x8.png").bits_stored == 8

    # float samples are mapped from their range (or value_range) onto the full code range
    floats = np.linspace(-1, 1, 32 * 32, dtype=np.float32).reshape(1, 32, 32)
    arr, _ = read_image(write_image(floats, tmp_path / "f.png", bit_depth=8, value_range=(-1.0, 1.0)))
    assert arr.min() == 0 and arr.max() == 255
    np.testing.assert_allclose(arr / 255 * 2 - 1, floats, atol=1 / 255)

    with pytest.raises(ValueError, match="do not fit 8-bit"):
        write_image(data, tmp_path / "bad.png", bit_depth=8)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown suffix"):
        write_image(np.zeros((1, 4, 4)), tmp_path / "x.bmp")
    with pytest.raises(ValueError, match="1 channel"):
        write_image(np.zeros((2, 4, 4)), tmp_path / "x.nii")
    with pytest.raises(ValueError, match="spacing"):
        write_image(np.zeros((1, 4, 4)), tmp_path / "x.nii", spacing=(1.0, 1.0, 1.0))
    assert not list(tmp_path.iterdir())  # nothing half-written


def _identified_reference(tmp_path: Path) -> tuple[Path, list[str]]:
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.PatientName = "Doe^Jane^Secret"
    ds.PatientID = "PID-98765-XYZ"
    ds.PatientBirthDate = "19410203"
    ds.StudyDate = "20230415"
    ds.InstitutionName = "St Example Dental Clinic"
    ds.AccessionNumber = "ACC5551234"
    ds.ReferringPhysicianName = "Who^Doctor"
    path = tmp_path / "ref.dcm"
    ds.save_as(path)
    secrets = [
        "Doe^Jane^Secret",
        "PID-98765-XYZ",
        "19410203",
        "20230415",
        "St Example Dental",
        "ACC5551234",
        "Who^Doctor",
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
        str(ds.FrameOfReferenceUID),
    ]
    return path, secrets


@pytest.mark.parametrize("shape", [(1, 16, 16), (1, 4, 16, 16)])
def test_dicom_export_has_fresh_uids_and_no_identifying_attributes(tmp_path, shape):
    ref, secrets = _identified_reference(tmp_path)
    data = np.random.default_rng(0).normal(100, 30, size=shape).astype(np.float32)
    out = write_image(data, tmp_path / "out" / "sample.dcm", reference=ref, synthetic=True)

    raw = out.read_bytes()
    for secret in secrets:
        assert secret.encode() not in raw, secret
    ds = pydicom.dcmread(out)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "AccessionNumber"):
        assert str(ds.get(keyword, "")) == ""
    assert "InstitutionName" not in ds
    assert ds.ImageType[0] == "DERIVED" and ds.ConversionType == "SYN" and ds.PatientIdentityRemoved == "YES"
    assert ds.Modality == "CT"  # allow-listed geometry/acquisition kind is kept
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.661468, 0.661468])

    # a second export of the same data gets different UIDs
    ds2 = pydicom.dcmread(write_image(data, tmp_path / "out" / "sample2.dcm", reference=ref, synthetic=True))
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        assert ds.get(keyword) != ds2.get(keyword)

    # and it reads back as the image that was written, up to 16-bit quantisation
    arr, spacing = read_image(out)
    assert arr.shape == data.shape
    step = (data.max() - data.min()) / 65535
    np.testing.assert_allclose(arr, data, atol=step)


def test_dicom_export_without_reference_is_derived_not_synthetic(tmp_path):
    data = np.arange(64, dtype=np.uint16).reshape(1, 8, 8)
    out = write_image(data, tmp_path / "d.dcm", spacing=(0.2, 0.3))
    ds = pydicom.dcmread(out)
    assert ds.ConversionType == "WSD" and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    arr, spacing = read_image(out)
    np.testing.assert_array_equal(arr, data.astype(np.float32))  # integers are stored exactly
    assert spacing == pytest.approx((0.2, 0.3))
