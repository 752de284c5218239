"""`medgen check-data` and scan_files: one reason per unusable file, caching, parallel reads, no patient data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import MPEG2MPML

from medgen.cli import main
from medgen.data import check, scan_files
from medgen.io import find_images

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent
DIRTESTS = TEST_FILES / "dicomdirtests"


def run_check_data(argv: list[str]) -> int:
    """`medgen check-data ...` through the sub-command this module registers (the CLI's own wiring)."""
    return main(["check-data", *argv])


def test_registered_in_the_cli():
    from medgen.cli import build_parser

    assert "check-data" in build_parser()._subparsers._group_actions[0].choices


def _seed_bad_folder(base: Path) -> dict[str, str]:
    """data_base_dir/edente with two good files and one file of every unusable kind -> expected reasons."""
    d = base / "edente"
    d.mkdir(parents=True)
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    expected = {}

    shutil.copy(TEST_FILES / "CT_small.dcm", d / "good_ct.dcm")  # 128x128
    shutil.copy(TEST_FILES / "MR_small_RLE.dcm", d / "good_mr_rle.dcm")  # 64x64
    expected.update({"edente/good_ct.dcm": None, "edente/good_mr_rle.dcm": None})

    (d / "empty.dcm").write_bytes(b"")
    (d / "truncated.dcm").write_bytes(ct[: len(ct) // 2])
    (d / "readme_not_dicom.dcm").write_bytes(b"not an image at all\n" * 10)
    shutil.copy(TEST_FILES / "test-SR.dcm", d / "report_sr.dcm")
    shutil.copy(DIRTESTS / "DICOMDIR", d / "DICOMDIR")
    expected.update(
        {
            "edente/empty.dcm": "empty",
            "edente/truncated.dcm": "truncated",
            "edente/readme_not_dicom.dcm": "not_dicom",
            "edente/report_sr.dcm": "no_pixel_data",
            "edente/DICOMDIR": "no_pixel_data",
        }
    )

    # a transfer syntax pydicom has no decoder for (MPEG-2 video)
    ds = pydicom.dcmread(TEST_FILES / "MR_small_jpeg_ls_lossless.dcm")
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(d / "mpeg2.dcm")
    expected["edente/mpeg2.dcm"] = "unsupported_transfer_syntax"

    # a JPEG 2000 codestream with its data destroyed
    ds = pydicom.dcmread(TEST_FILES / "MR_small_jp2klossless.dcm")
    frame = bytearray(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1).__next__())
    frame[2:] = bytes(len(frame) - 2)
    ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
    ds.save_as(d / "broken_j2k.dcm")
    expected["edente/broken_j2k.dcm"] = "undecodable"

    shutil.copy(TEST_FILES / "rtdose.dcm", d / "multiframe_3d.dcm")  # 3D where spatial_dims=2
    shutil.copy(DIRTESTS / "77654033/CR1/6154", d / "tiny_cr")  # 16x16 < patch 32x32
    expected.update({"edente/multiframe_3d.dcm": "wrong_dimensions", "edente/tiny_cr": "too_small"})

    img = np.ones((1, 40, 40), np.float32)
    img[0, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(img.transpose(2, 1, 0), np.eye(4)), d / "nan.nii.gz")
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(d / "constant.png")
    (d / "garbage.nii.gz").write_bytes(b"\x1f\x8bnot really gzip" * 20)
    (d / "garbage.png").write_bytes(b"\x89PNG broken" * 20)
    expected.update(
        {
            "edente/nan.nii.gz": "non_finite",
            "edente/constant.png": "constant",
            "edente/garbage.nii.gz": "unreadable",
            "edente/garbage.png": "unreadable",
        }
    )
    return expected


def test_check_data_reports_every_bad_file(tmp_path, capsys):
    base = tmp_path / "data"
    expected = _seed_bad_folder(base)
    report = tmp_path / "report.json"
    code = run_check_data(
        [str(base), "--spatial-dims", "2", "--patch-size", "32", "32", "--json", str(report), "--workers", "0"]
    )
    out = capsys.readouterr().out
    assert code == 1

    files = {f["path"]: f for f in json.loads(report.read_text())["files"]}
    assert set(files) == set(expected)
    for path, reason in expected.items():
        assert files[path]["reason"] == reason, (path, files[path])
        assert files[path]["status"] == ("ok" if reason is None else "bad")
        if reason is not None:  # one line per unusable file on the console, by relative path
            assert any(line.strip().startswith(path) and reason in line for line in out.splitlines()), path
    assert files["edente/good_mr_rle.dcm"]["transfer_syntax"] == "RLE Lossless"
    assert files["edente/good_ct.dcm"]["shape"] == [128, 128] and files["edente/good_ct.dcm"]["modality"] == "CT"
    counts = json.loads(report.read_text())["counts"]
    assert counts["ok"] == 2 and counts["bad"] == len(expected) - 2
    assert "edente: 2 usable" in out
    assert str(tmp_path) not in report.read_text()  # paths are relative to data_base_dir


def test_check_data_exit_0_and_config_mode(tmp_path, capsys):
    base = tmp_path / "data"
    (base / "edente").mkdir(parents=True)
    (base / "dente").mkdir()
    shutil.copy(TEST_FILES / "CT_small.dcm", base / "edente" / "a.dcm")
    shutil.copy(TEST_FILES / "MR_small.dcm", base / "edente" / "b.dcm")
    shutil.copytree(DIRTESTS / "98892001/CT5N", base / "dente" / "vol1")
    config = tmp_path / "cfg.json"
    config.write_text(
        json.dumps(
            {
                "data_base_dir": str(base),
                "data_source": "edente",
                "spatial_dims": 2,
                "autoencoder_train": {"patch_size": [32, 32]},
            }
        )
    )
    assert run_check_data([str(config), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "edente: 2 usable, 0 unusable" in out and "dente:" not in out.replace("edente:", "")

    # data_source both: the 3D series folder in dente/ is the wrong dimensionality for spatial_dims 2
    config.write_text(json.dumps({"data_base_dir": str(base), "data_source": "both", "spatial_dims": 2}))
    assert run_check_data([str(config), "--workers", "0"]) == 1
    out = capsys.readouterr().out
    assert "dente/vol1" in out and "wrong_dimensions" in out
    # ... and right for spatial_dims 3 given on the command line
    assert run_check_data([str(base / "dente"), "--spatial-dims", "3", "--workers", "0"]) == 0


def test_parallel_scan_matches_serial(tmp_path):
    base = tmp_path / "data"
    _seed_bad_folder(base)
    items = find_images(base)
    serial = scan_files(items, base, 2, (32, 32), workers=0)
    parallel = scan_files(items, base, 2, (32, 32), workers=2)
    assert [r.as_dict() for r in serial] == [r.as_dict() for r in parallel]


def test_cache_skips_unchanged_files(tmp_path, monkeypatch):
    base = tmp_path / "data"
    (base / "edente").mkdir(parents=True)
    shutil.copy(TEST_FILES / "CT_small.dcm", base / "edente" / "a.dcm")
    shutil.copy(TEST_FILES / "MR_small.dcm", base / "edente" / "b.dcm")
    cache = tmp_path / "cache" / "scan.json"
    items = find_images(base)
    first = scan_files(items, base, 2, None, workers=0, cache_path=cache)
    assert all(r.ok for r in first) and cache.is_file()

    # From now on every real read fails: results can only come from the cache.
    def broken(path):
        raise RuntimeError("reader called")

    monkeypatch.setattr(check, "read_pixels", broken)
    again = scan_files(items, base, 2, None, workers=0, cache_path=cache)
    assert [r.as_dict() for r in again] == [r.as_dict() for r in first]

    # a changed file (new size and mtime) is read again
    shutil.copy(TEST_FILES / "MR_small_RLE.dcm", base / "edente" / "b.dcm")
    os.utime(base / "edente" / "b.dcm", ns=(1, 10**18))
    changed = {r.path: r for r in scan_files(items, base, 2, None, workers=0, cache_path=cache)}
    assert changed["edente/a.dcm"].ok
    assert changed["edente/b.dcm"].reason == "unreadable"  # the broken reader ran for it


def test_no_patient_data_in_reports_or_console(tmp_path, capsys):
    """Identifying header values must not reach the console or the JSON report, good files or bad."""
    base = tmp_path / "data"
    d = base / "dente"
    secrets = {
        "PatientName": "Doe^Jane^Secret",
        "PatientID": "PID-98765-XYZ",
        "PatientBirthDate": "19410203",
        "StudyDate": "20230415",
        "SeriesDate": "20230416",
        "AcquisitionDate": "20230417",
        "InstitutionName": "St Example Dental Clinic",
        "AccessionNumber": "ACC5551234",
        "ReferringPhysicianName": "Who^Doctor",
        "StudyDescription": "JANE DOE FOLLOW UP",
        "SeriesDescription": "JANE DOE CBCT",
    }
    uids: set[str] = set()

    def identify(ds, series_uid=None):
        for keyword, value in secrets.items():
            setattr(ds, keyword, value)
        if series_uid:
            ds.SeriesInstanceUID = series_uid
        uids.update(str(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if k in ds)
        return ds

    d.mkdir(parents=True)
    identify(pydicom.dcmread(DIRTESTS / "77654033/CR1/6154")).save_as(d / "good.dcm")
    cut = identify(pydicom.dcmread(TEST_FILES / "CT_small.dcm"))
    cut.save_as(d / "full.dcm")
    (d / "truncated.dcm").write_bytes((d / "full.dcm").read_bytes()[:-5000])
    (d / "full.dcm").unlink()
    identify(pydicom.dcmread(TEST_FILES / "test-SR.dcm")).save_as(d / "sr.dcm")
    # a volume, and a folder holding two series (its error lists the series)
    (d / "vol").mkdir()
    for f in sorted((DIRTESTS / "98892001/CT5N").iterdir()):
        identify(pydicom.dcmread(f)).save_as(d / "vol" / f.name)
    (d / "two_series").mkdir()
    for i, f in enumerate(sorted((DIRTESTS / "98892001/CT5N").iterdir())):
        identify(pydicom.dcmread(f), series_uid="1.2.826.0.1.999.1" if i < 3 else "1.2.826.0.1.999.2").save_as(
            d / "two_series" / f.name
        )

    report, cache = tmp_path / "report.json", tmp_path / "scan_cache.json"
    code = run_check_data([str(base), "--json", str(report), "--cache", str(cache), "--workers", "0"])
    captured = capsys.readouterr()
    assert code == 1
    reasons = {f["path"]: f["reason"] for f in json.loads(report.read_text())["files"]}
    assert reasons == {
        "dente/good.dcm": None,
        "dente/truncated.dcm": "truncated",
        "dente/sr.dcm": "no_pixel_data",
        "dente/vol": None,
        "dente/two_series": "multiple_series",
    }
    haystack = report.read_bytes() + cache.read_bytes() + captured.out.encode() + captured.err.encode()
    needles = list(secrets.values()) + sorted(uids) + ["Doe", "Jane", "JANE DOE"]
    assert len(uids) > 5
    for needle in needles:
        assert needle.encode() not in haystack, needle
