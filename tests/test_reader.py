"""medgen.io.reader on pydicom's and nibabel's real test files, and on files generated here."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, get_decoder

from medgen.io import ImageReadError, find_images, inspect_image, read_image

# Only files shipped inside the pydicom wheel (get_testdata_file would download anything else).
TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent
DIRTESTS = TEST_FILES / "dicomdirtests"
CR_FILES = ["77654033/CR1/6154", "77654033/CR2/6247", "77654033/CR3/6278"]
EXTRA_HINT = 'pip install "medgen[dicom]"'


def _copy_series(src: Path, dst: Path, edit=None, shuffle_names: bool = False) -> Path:
    """Copy a series folder, optionally editing each dataset and renaming files in a random order."""
    dst.mkdir(parents=True)
    files = sorted(src.iterdir())
    names = [f"{i:03d}.dcm" for i in range(len(files))]
    if shuffle_names:
        random.Random(0).shuffle(names)
    for f, name in zip(files, names, strict=True):
        ds = pydicom.dcmread(f)
        if edit is not None:
            edit(ds)
        ds.save_as(dst / name)
    return dst


# --------------------------------------------------------------------------------------------------
# Presentation form
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CR_FILES)
def test_monochrome1_cr_is_rescaled_and_inverted(name):
    ds = pydicom.dcmread(DIRTESTS / name)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and float(ds.RescaleSlope) != 1.0  # the case under test
    arr, spacing = read_image(DIRTESTS / name)

    rescaled = apply_modality_lut(ds.pixel_array, ds)
    ends = apply_modality_lut(np.array([0, 2**ds.BitsStored - 1]), ds)  # unsigned BitsStored range
    expected = ends.min() + ends.max() - rescaled
    assert arr.shape == (1, *ds.pixel_array.shape) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[0], expected, rtol=1e-6)
    # bone (low stored values in MONOCHROME1) comes out bright
    assert np.unravel_index(arr[0].argmax(), arr[0].shape) == np.unravel_index(
        ds.pixel_array.argmin(), ds.pixel_array.shape
    )
    assert spacing == pytest.approx([float(v) for v in ds.get("PixelSpacing") or ds.ImagerPixelSpacing])


def test_monochrome2_signed_ct_gets_modality_lut_only():
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert ds.PixelRepresentation == 1  # signed data
    arr, spacing = read_image(TEST_FILES / "CT_small.dcm")
    np.testing.assert_array_equal(arr[0], apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
    assert arr.min() < 0


def test_rgb_and_ybr_become_luminance():
    rgb, _ = read_image(TEST_FILES / "SC_rgb_rle.dcm")
    raw = pydicom.dcmread(TEST_FILES / "SC_rgb_rle.dcm").pixel_array.astype(np.float64)
    np.testing.assert_allclose(rgb[0], raw @ [0.299, 0.587, 0.114], rtol=1e-6)
    # the same picture stored as YBR_FULL (lossy JPEG) gives nearly the same gray image
    ybr, _ = read_image(TEST_FILES / "SC_rgb_dcmtk_+eb+cy+n1.dcm")
    assert pydicom.dcmread(TEST_FILES / "SC_rgb_dcmtk_+eb+cy+n1.dcm").PhotometricInterpretation == "YBR_FULL"
    assert ybr.shape == (1, 100, 100)
    assert np.abs(ybr[0] - rgb[0]).mean() < 3.0


# --------------------------------------------------------------------------------------------------
# Series folders
# --------------------------------------------------------------------------------------------------


def _expected_ct5n():
    """CT5N slices sorted by position along the normal (z here): the reference order."""
    slices = [pydicom.dcmread(f) for f in (DIRTESTS / "98892001/CT5N").iterdir()]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return slices, np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in slices])


def test_ct_series_folder_is_a_volume_in_position_order():
    slices, expected = _expected_ct5n()
    # InstanceNumber runs against the position here, so position order is really being used
    assert [int(ds.InstanceNumber) for ds in slices] == sorted((int(ds.InstanceNumber) for ds in slices), reverse=True)
    arr, spacing = read_image(DIRTESTS / "98892001/CT5N")
    assert arr.shape == (1, 5, 16, 16)
    np.testing.assert_array_equal(arr[0], expected.astype(np.float32))
    assert spacing == pytest.approx((2.5, 0.488281, 0.488281))


def test_ct_series_shuffled_without_instance_number(tmp_path):
    _, expected = _expected_ct5n()

    def drop_instance_number(ds):
        del ds.InstanceNumber

    folder = _copy_series(DIRTESTS / "98892001/CT5N", tmp_path / "vol", drop_instance_number, shuffle_names=True)
    arr, spacing = read_image(folder)
    np.testing.assert_array_equal(arr[0], expected.astype(np.float32))
    assert spacing == pytest.approx((2.5, 0.488281, 0.488281))


def test_ct_series_irregular_positions_use_spacing_from_positions(tmp_path):
    # Slices 2 mm apart while the header claims 2.5 mm thickness: the positions win.
    def move(ds):
        ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) / 2.5 * 2.0

    arr, spacing = read_image(_copy_series(DIRTESTS / "98892001/CT5N", tmp_path / "vol", move, shuffle_names=True))
    assert spacing[0] == pytest.approx(2.0)


def test_ct_series_without_positions_falls_back_to_instance_number(tmp_path):
    slices, expected = _expected_ct5n()

    def drop_positions(ds):
        del ds.ImagePositionPatient

    folder = _copy_series(DIRTESTS / "98892001/CT5N", tmp_path / "vol", drop_positions, shuffle_names=True)
    arr, spacing = read_image(folder)
    # InstanceNumber order is the reverse of the position order for this series
    np.testing.assert_array_equal(arr[0], expected[::-1].astype(np.float32))
    assert spacing[0] == pytest.approx(float(slices[0].SliceThickness))


def test_series_with_a_broken_slice_names_the_slice(tmp_path):
    folder = _copy_series(DIRTESTS / "98892001/CT5N", tmp_path / "vol")
    (folder / "002.dcm").write_bytes((folder / "002.dcm").read_bytes()[:-100])
    with pytest.raises(ImageReadError) as err:
        read_image(folder)
    assert err.value.reason == "truncated" and err.value.path == folder and "002.dcm" in err.value.detail


def test_folder_with_several_series_is_an_error_without_uids(tmp_path):
    uids = set()
    folder = tmp_path / "mixed"
    for i, series in enumerate(["98892001/CT5N", "77654033/CT2"]):
        for f in (DIRTESTS / series).iterdir():
            ds = pydicom.dcmread(f)
            uids |= {str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)}
            folder.mkdir(exist_ok=True)
            ds.save_as(folder / f"{i}_{f.name}")
    with pytest.raises(ImageReadError) as err:
        read_image(folder)
    assert err.value.reason == "multiple_series"
    message = str(err.value)
    assert "5 files" in message and "4 files" in message
    assert not any(uid in message for uid in uids)


def test_multiframe_file_is_a_volume():
    ds = pydicom.dcmread(TEST_FILES / "rtdose.dcm")
    arr, spacing = read_image(TEST_FILES / "rtdose.dcm")
    assert int(ds.NumberOfFrames) == 15 and arr.shape == (1, 15, 10, 10)
    np.testing.assert_array_equal(arr[0], ds.pixel_array.astype(np.float32))
    assert spacing[1:] == pytest.approx([float(v) for v in ds.PixelSpacing])
    info = inspect_image(TEST_FILES / "rtdose.dcm")
    assert info.kind == "dicom" and info.shape == (15, 10, 10)


# --------------------------------------------------------------------------------------------------
# Compressed transfer syntaxes
# --------------------------------------------------------------------------------------------------

COMPRESSED = {  # file -> uncompressed file with the same pixels (all lossless)
    "MR_small_RLE.dcm": "MR_small.dcm",
    "MR_small_jpeg_ls_lossless.dcm": "MR_small.dcm",
    "MR_small_jp2klossless.dcm": "MR_small.dcm",
    "SC_rgb_jpeg_gdcm.dcm": "SC_rgb_rle.dcm",  # JPEG Lossless SV1, via python-gdcm
    "rtdose_rle.dcm": "rtdose.dcm",  # multi-frame RLE
}


@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_compressed_files_decode_with_the_extra(name):
    arr, _ = read_image(TEST_FILES / name)
    ref, _ = read_image(TEST_FILES / COMPRESSED[name])
    np.testing.assert_array_equal(arr, ref)
    assert (
        inspect_image(TEST_FILES / name).transfer_syntax
        == pydicom.dcmread(TEST_FILES / name).file_meta.TransferSyntaxUID.name
    )


@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_compressed_without_any_decoder_names_syntax_and_extra(name, monkeypatch):
    ts = pydicom.dcmread(TEST_FILES / name).file_meta.TransferSyntaxUID
    monkeypatch.setattr(get_decoder(ts), "_available", {})  # pydicom now sees no decoder plugin for ts
    with pytest.raises(ImageReadError) as err:
        read_image(TEST_FILES / name)
    assert err.value.reason == "unsupported_transfer_syntax"
    assert ts.name in str(err.value) and str(ts) in str(err.value) and EXTRA_HINT in str(err.value)
    assert str(TEST_FILES / name) in str(err.value)


def test_without_the_extra_installed(tmp_path):
    """A fresh interpreter in which the extra's modules cannot be imported, as after a plain install."""
    script = textwrap.dedent(
        f"""
        import importlib.abc, json, sys
        BLOCKED = {{"pylibjpeg", "openjpeg", "rle", "jpeg_ls", "gdcm", "libjpeg"}}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(name + " blocked")
        sys.meta_path.insert(0, Block())
        from PIL import features
        from medgen.io.image import ImageReadError
        from medgen.io.reader import read_image
        out = {{"pillow_j2k": features.check_codec("jpg_2000")}}
        for name in {sorted(COMPRESSED)!r}:
            try:
                read_image({str(TEST_FILES)!r} + "/" + name)
                out[name] = "ok"
            except ImageReadError as e:
                out[name] = [e.reason, str(e)]
        print(json.dumps(out))
        """
    )
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm"):  # only the extra decodes these
        reason, message = out[name]
        ts = pydicom.dcmread(TEST_FILES / name).file_meta.TransferSyntaxUID
        assert reason == "unsupported_transfer_syntax" and ts.name in message and EXTRA_HINT in message
    # RLE has a pure-numpy decoder inside pydicom; JPEG 2000 needs the extra unless Pillow has OpenJPEG
    assert out["MR_small_RLE.dcm"] == "ok" and out["rtdose_rle.dcm"] == "ok"
    if out["pillow_j2k"]:
        assert out["MR_small_jp2klossless.dcm"] == "ok"
    else:
        assert EXTRA_HINT in out["MR_small_jp2klossless.dcm"][1]


# --------------------------------------------------------------------------------------------------
# NIfTI and PNG/JPEG
# --------------------------------------------------------------------------------------------------


def test_nifti_orientations_come_out_alike(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(4, 5, 6)).astype(np.float32)  # (slices, rows, cols) = (S, P, L)
    sz, sy, sx = 3.0, 0.5, 0.25
    # The same voxels stored RAS (x: left->right, y: posterior->anterior) and LPS.
    ras = nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)[::-1, ::-1, :]), np.diag([sx, sy, sz, 1]))
    lps = nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), np.diag([-sx, -sy, sz, 1]))
    # and with the axes stored in another order (z, x, y)
    perm = nib.Nifti1Image(
        np.ascontiguousarray(vol.transpose(0, 2, 1)),
        np.array([[0, -sx, 0, 0], [0, 0, -sy, 0], [sz, 0, 0, 0], [0, 0, 0, 1]], dtype=float),
    )
    for name, img in {"ras.nii.gz": ras, "lps.nii": lps, "perm.nii.gz": perm}.items():
        nib.save(img, tmp_path / name)
        arr, spacing = read_image(tmp_path / name)
        np.testing.assert_array_equal(arr[0], vol, err_msg=name)
        assert spacing == pytest.approx((sz, sy, sx)), name


def test_real_nifti_from_nibabel():
    from nibabel.testing import data_path

    path = Path(data_path) / "anatomical.nii"
    canonical = nib.as_closest_canonical(nib.load(path))
    arr, spacing = read_image(path)
    assert arr.shape[1:] == canonical.shape[::-1]
    assert spacing == pytest.approx(canonical.header.get_zooms()[::-1])


def test_png_16_bit(tmp_path):
    data = (np.arange(32 * 24, dtype=np.uint32).reshape(32, 24) * 83 % 65536).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "x.png")
    arr, spacing = read_image(tmp_path / "x.png")
    np.testing.assert_array_equal(arr[0], data.astype(np.float32))
    assert spacing == (1.0, 1.0) and inspect_image(tmp_path / "x.png").bits_stored == 16


def test_png_exif_orientation_and_rgb(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(4, 6)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(data).save(tmp_path / "rot.png", exif=exif)
    arr, _ = read_image(tmp_path / "rot.png")
    np.testing.assert_array_equal(arr[0], np.rot90(data, -1))

    rgb = np.random.default_rng(1).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    gray, _ = read_image(tmp_path / "rgb.png")
    np.testing.assert_allclose(gray[0], rgb @ [0.299, 0.587, 0.114], rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Unusable files
# --------------------------------------------------------------------------------------------------


def _bad_file(tmp_path: Path, kind: str) -> Path:
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    if kind == "empty":
        (p := tmp_path / "empty.dcm").write_bytes(b"")
    elif kind == "truncated":
        (p := tmp_path / "cut.dcm").write_bytes(ct[: len(ct) // 2])
    elif kind == "truncated_header":
        (p := tmp_path / "cut_header").write_bytes(ct[:1000])
    elif kind == "not_dicom":
        (p := tmp_path / "notes.dcm").write_bytes(b"this is not an image\n" * 20)
    elif kind == "sr":
        p = TEST_FILES / "test-SR.dcm"
    elif kind == "dicomdir":
        p = DIRTESTS / "DICOMDIR"
    elif kind == "truncated_png":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "a.png")
        (p := tmp_path / "cut.png").write_bytes((tmp_path / "a.png").read_bytes()[:300])
    elif kind == "garbage_png":
        (p := tmp_path / "bad.png").write_bytes(b"\x00garbage" * 50)
    elif kind == "garbage_nifti":
        (p := tmp_path / "bad.nii.gz").write_bytes(b"\x00garbage" * 50)
    elif kind == "truncated_nifti":
        nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.float32), np.eye(4)), tmp_path / "v.nii")
        (p := tmp_path / "cut.nii").write_bytes((tmp_path / "v.nii").read_bytes()[:5000])
    return p


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("empty", "empty"),
        ("truncated", "truncated"),
        ("truncated_header", "truncated"),
        ("not_dicom", "not_dicom"),
        ("sr", "no_pixel_data"),
        ("dicomdir", "no_pixel_data"),
        ("truncated_png", "truncated"),
        ("garbage_png", "unreadable"),
        ("garbage_nifti", "unreadable"),
        ("truncated_nifti", "truncated"),
    ],
)
def test_unusable_files_get_a_reason_and_name_the_file(tmp_path, kind, reason):
    path = _bad_file(tmp_path, kind)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert err.value.reason == reason
    assert str(path) in str(err.value)
    if kind == "sr":  # the SR's patient name must not appear in the message
        assert str(pydicom.dcmread(path).PatientName) not in str(err.value)


# --------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------


def test_find_images_on_the_class_layout(tmp_path):
    base = tmp_path / "data"
    (base / "edente").mkdir(parents=True)
    shutil.copy(DIRTESTS / CR_FILES[0], base / "edente" / "pano1")  # DICOM without suffix
    shutil.copy(TEST_FILES / "CT_small.dcm", base / "edente" / "pano2.dcm")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(base / "edente" / "pano3.png")
    (base / "edente" / "notes.txt").write_text("sidecar")
    (base / "edente" / ".hidden.dcm").write_bytes(b"")
    _copy_series(DIRTESTS / "98892001/CT5N", base / "dente" / "vol1")
    _copy_series(DIRTESTS / "77654033/CT2", base / "dente" / "vol2" / "series")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), base / "dente" / "vol3.nii.gz")

    # An intra-oral "full-mouth series": several same-sized 2D images sharing one series stays one item per file.
    def as_intraoral(ds):
        ds.Modality = "IO"
        ds.SeriesInstanceUID = "1.2.3.4.5"

    for i in range(3):
        ds = pydicom.dcmread(DIRTESTS / CR_FILES[0])
        as_intraoral(ds)
        (base / "edente" / "fmx").mkdir(exist_ok=True)
        ds.save_as(base / "edente" / "fmx" / f"io{i}.dcm")

    rel = [p.relative_to(base).as_posix() for p in find_images(base)]
    assert rel == [
        "dente/vol1",
        "dente/vol2/series",
        "dente/vol3.nii.gz",
        "edente/fmx/io0.dcm",
        "edente/fmx/io1.dcm",
        "edente/fmx/io2.dcm",
        "edente/pano1",
        "edente/pano2.dcm",
        "edente/pano3.png",
    ]
    assert read_image(base / "dente" / "vol1")[0].shape == (1, 5, 16, 16)
    with pytest.raises(FileNotFoundError):
        find_images(base / "missing")


def _intra_oral(path, patient: str, rows: int, cols: int, seed: int, **extra) -> None:
    """One intra-oral radiograph as a vendor's export writes it: 8-bit, Explicit VR, no series UID, no positions."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.3"  # Digital Intra-Oral X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.InstanceNumber = "IO", patient, 1
    for key, value in extra.items():
        setattr(ds, key, value)
    pixels = np.random.default_rng(seed).integers(0, 256, (rows, cols), dtype=np.uint8)
    ds.set_pixel_data(pixels, "MONOCHROME2", bits_stored=8)
    ds.save_as(path, enforce_file_format=True)


def test_a_folder_of_separate_intra_oral_radiographs_is_never_one_volume(tmp_path):
    folder = tmp_path / "io"
    folder.mkdir()
    for i in range(7):  # seven patients, same sensor size
        _intra_oral(folder / f"img{i}.dcm", f"Patient^{i}", 40, 30, seed=i)
    with pytest.raises(ImageReadError) as err:
        read_image(folder)
    assert err.value.reason == "not_a_volume" and "7 separate 2D images (modality IO)" in err.value.detail
    assert "Patient" not in str(err.value)
    items = find_images(folder)
    assert items == sorted(folder.glob("*.dcm"))  # seven 2D items, not one series folder
    assert all(read_image(p)[0].shape == (1, 40, 30) for p in items)


def test_images_without_series_or_positions_are_not_stacked(tmp_path):
    folder = tmp_path / "ot"
    folder.mkdir()
    for i in range(3):  # a modality that could be a volume, but nothing says these images belong together
        _intra_oral(folder / f"img{i}.dcm", "", 16, 16, seed=i, Modality="OT")
    with pytest.raises(ImageReadError) as err:
        read_image(folder)
    assert err.value.reason == "not_a_volume" and "no series and no slice positions" in err.value.detail


def test_a_zero_pixel_spacing_counts_as_absent(tmp_path):
    """Real CR files carry PixelSpacing 0.000\\0.000; a zero spacing would make a singular NIfTI affine."""
    import numpy as np
    import pydicom

    from medgen.io import read_image, write_image

    path = write_image(np.arange(24 * 20, dtype=np.uint16).reshape(1, 24, 20), tmp_path / "cr.dcm", spacing=(0.2, 0.2))
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = [0.0, 0.0]
    ds.ImagerPixelSpacing = [0.14, 0.15]
    ds.save_as(path)
    assert read_image(path)[1] == pytest.approx((0.14, 0.15))
    del ds.ImagerPixelSpacing
    ds.save_as(path)
    assert read_image(path)[1] == (1.0, 1.0)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("high_bits", [False, True])
def test_bits_above_bits_stored_are_cleared_as_pydicom_clears_them(tmp_path, signed, high_bits):
    # Uncompressed pixels are read as a view of the file; bits above BitsStored (overlays, vendor junk) must still
    # be cleared (sign-extended when signed), exactly as pydicom's pixel_array does.
    from medgen.io.reader import read_pixels

    src = get_testdata_file("CT_small.dcm" if signed else "examples_overlay.dcm")  # 16 bits allocated, 16 / 12 stored
    ds = pydicom.dcmread(src)
    ds.BitsStored, ds.HighBit = 12, 11
    dtype = np.int16 if signed else np.uint16
    stored = np.random.default_rng(0).integers(-2048 if signed else 0, 2048 if signed else 4096, (ds.Rows, ds.Columns))
    raw = stored.astype(dtype)
    if high_bits:
        raw = (raw.view(np.uint16) ^ np.uint16(0xA000)).view(dtype)  # set some of the four unused bits
    ds.PixelData = raw.tobytes()
    ds.save_as(tmp_path / "x.dcm")
    ds = pydicom.dcmread(tmp_path / "x.dcm")
    np.testing.assert_array_equal(ds.pixel_array, stored)  # what pydicom makes of the file
    values = read_pixels(tmp_path / "x.dcm")[0].values
    assert values.dtype == dtype and np.array_equal(values, stored)


@pytest.mark.parametrize("name, in_file", [
    ("CT_small.dcm", True), ("MR_small.dcm", True), ("examples_overlay.dcm", True),
    ("dicomdirtests/77654033/CR1/6154", True),  # MONOCHROME1: the stored values are in the file, the map beside
    ("MR_small_bigendian.dcm", False),  # swapped to native order: not the file's bytes
    ("image_dfl.dcm", False),  # deflated: pydicom's offsets are the inflated stream's
    ("MR_small_RLE.dcm", False), ("rtdose.dcm", False),  # compressed; several frames
])
def test_values_offset_says_where_uncompressed_values_lie_in_the_file(name, in_file):
    from medgen.io.reader import read_pixels

    path = TEST_FILES / name
    pixels, _, info = read_pixels(path)
    assert (info.values_offset is not None) == in_file
    assert "values_offset" not in info.as_dict()  # not a fact for reports
    if in_file:
        stored = pydicom.dcmread(path).pixel_array
        raw = path.read_bytes()[info.values_offset:info.values_offset + stored.nbytes]
        assert raw == stored.tobytes() and np.array_equal(pixels.values, stored)
