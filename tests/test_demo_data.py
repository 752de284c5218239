"""Tests for medgen.data.demo: the synthetic demo data set (layout, DICOM validity, content, determinism)."""

from __future__ import annotations

import hashlib

import numpy as np
import pydicom
import pytest

from medgen.cli import main
from medgen.data.demo import make_jaw_image, make_jaw_volume, write_demo_dataset


def _pixel_digest(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(pydicom.dcmread(p).PixelData)
    return h.hexdigest()


@pytest.fixture(scope="module")
def set2d(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("demo2d"), spatial_dims=2, count=6, size=64, seed=3)


@pytest.fixture(scope="module")
def set3d(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("demo3d"), spatial_dims=3, count=2, size=16, seed=3)


def test_2d_layout_and_dicom(set2d):
    assert "synthetic" in (set2d / "README.txt").read_text(encoding="utf-8").lower()
    for cls in ("edente", "dente"):
        files = sorted((set2d / cls).glob("*.dcm"))
        assert [f.name for f in files] == [f"{cls}_{i:04d}.dcm" for i in range(6)]
        ds = pydicom.dcmread(files[0])  # no force=True: a valid Part 10 file
        arr = ds.pixel_array
        assert arr.shape == (64, 64) and arr.dtype == np.uint16
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 12
        assert arr.max() <= 4095 and arr.max() > arr.min()
        assert ds.Modality == "PX"
        assert str(ds.PatientName) == "SYNTHETIC^DEMO" and ds.PatientID == "MEDGEN-DEMO"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert "not a patient" in ds.ImageComments and "synthetic" in ds.SeriesDescription
        assert len(ds.SeriesDescription) <= 64  # LO limit
    uids = {pydicom.dcmread(f).SOPInstanceUID for f in set2d.glob("*/*.dcm")}
    assert len(uids) == 12  # every image its own instance


def test_dente_has_more_bright_structure_than_edente(set2d):
    def load(cls):
        return [pydicom.dcmread(f).pixel_array / 4095.0 for f in sorted((set2d / cls).glob("*.dcm"))]

    edente, dente = load("edente"), load("dente")
    # Teeth (enamel, fillings) are the densest structures: above the edentulous images' 99th percentile,
    # dentate images have several times more pixels.
    thr = np.quantile(np.concatenate([a.ravel() for a in edente]), 0.99)
    bright = {name: np.mean([np.mean(a > thr) for a in arrs]) for name, arrs in (("e", edente), ("d", dente))}
    assert bright["d"] > 3 * bright["e"]
    # Rows of crowns and roots add horizontal edges.
    edge_energy = lambda arrs: np.mean([np.abs(np.diff(a, axis=1)).mean() for a in arrs])  # noqa: E731
    assert edge_energy(dente) > edge_energy(edente)


def test_2d_image_function_contract():
    img = make_jaw_image(np.random.default_rng(0), 48, teeth=True)
    assert img.shape == (48, 48) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    # Jaw in the middle is brighter than the corners (dark background, bright arch).
    assert img[16:40, 8:40].mean() > img[:6, :6].mean() + 0.05
    with pytest.raises(ValueError, match="size"):
        make_jaw_image(np.random.default_rng(0), 8, teeth=True)


def test_3d_series_geometry(set3d):
    for cls in ("edente", "dente"):
        vols = sorted(p for p in (set3d / cls).iterdir() if p.is_dir())
        assert [v.name for v in vols] == ["vol_0000", "vol_0001"]
        series = set()
        for vol in vols:
            slices = [pydicom.dcmread(f) for f in sorted(vol.glob("slice_*.dcm"))]
            assert len(slices) == 16
            assert len({s.SeriesInstanceUID for s in slices}) == 1
            series.add(slices[0].SeriesInstanceUID)
            assert len({s.SOPInstanceUID for s in slices}) == 16
            z = np.array([float(s.ImagePositionPatient[2]) for s in slices])
            spacing = float(slices[0].PixelSpacing[0])
            # File order == position order == instance order, equally spaced by SliceThickness.
            assert np.all(np.diff(z) > 0)
            assert np.allclose(np.diff(z), float(slices[0].SliceThickness), rtol=1e-4)
            assert np.isclose(float(slices[0].SliceThickness), spacing, rtol=1e-4)
            assert [int(s.InstanceNumber) for s in slices] == list(range(1, 17))
            for s in slices:
                assert [float(v) for v in s.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
                assert [float(v) for v in s.ImagePositionPatient[:2]] == [
                    float(v) for v in slices[0].ImagePositionPatient[:2]
                ]
                assert s.Modality == "CT" and s.PixelRepresentation == 1
                assert str(s.PatientName) == "SYNTHETIC^DEMO" and "not a patient" in s.ImageComments
                assert "synthetic" in s.SeriesDescription and len(s.SeriesDescription) <= 64
                assert float(s.RescaleIntercept) == -1000 and float(s.RescaleSlope) == 1
            hu = np.stack([s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices])
            assert hu.min() < -900 and hu.max() > 400  # air and bone are both present (bone is sub-voxel at 16^3)
        assert len(series) == 2  # one series per volume


def test_3d_dente_has_more_dense_voxels():
    rng = np.random.default_rng
    vols = {t: [make_jaw_volume(rng([s, 7]), 32, t) for s in range(3)] for t in (False, True)}
    assert all(v.shape == (32, 32, 32) and v.dtype == np.float32 for vs in vols.values() for v in vs)
    assert all(v.min() >= -1000 and v.max() <= 3000 for vs in vols.values() for v in vs)
    # Teeth (dentine, enamel) are denser than any bone: dense voxels appear only with teeth.
    dense = {t: np.mean([np.mean(v > 1200) for v in vs]) for t, vs in vols.items()}
    assert dense[True] > 0.001 and dense[True] > 5 * dense[False]


def test_same_seed_same_output_different_seed_differs(tmp_path, set2d):
    again = write_demo_dataset(tmp_path / "a", spatial_dims=2, count=6, size=64, seed=3)
    other = write_demo_dataset(tmp_path / "b", spatial_dims=2, count=6, size=64, seed=4)
    files = lambda root: sorted(root.glob("*/*.dcm"))  # noqa: E731
    assert _pixel_digest(files(again)) == _pixel_digest(files(set2d))
    # The whole file, UIDs included, is reproducible.
    assert (again / "dente" / "dente_0002.dcm").read_bytes() == (set2d / "dente" / "dente_0002.dcm").read_bytes()
    assert _pixel_digest(files(other)) != _pixel_digest(files(set2d))
    first = lambda root: pydicom.dcmread(root / "edente" / "edente_0000.dcm")  # noqa: E731
    assert first(other).SOPInstanceUID != first(set2d).SOPInstanceUID


def test_3d_deterministic(tmp_path):
    a = write_demo_dataset(tmp_path / "a", spatial_dims=3, count=1, size=16, seed=1)
    b = write_demo_dataset(tmp_path / "b", spatial_dims=3, count=1, size=16, seed=1)
    c = write_demo_dataset(tmp_path / "c", spatial_dims=3, count=1, size=16, seed=2)
    files = lambda root: sorted(root.glob("dente/vol_0000/*.dcm"))  # noqa: E731
    assert _pixel_digest(files(a)) == _pixel_digest(files(b)) != _pixel_digest(files(c))


def test_rerun_replaces_demo_but_refuses_foreign_folder(tmp_path):
    out = write_demo_dataset(tmp_path / "d", count=3, size=32)
    write_demo_dataset(out, count=2, size=32)
    assert len(list((out / "dente").glob("*.dcm"))) == 2  # stale images from the larger run are gone
    foreign = tmp_path / "real"
    (foreign / "dente").mkdir(parents=True)
    (foreign / "dente" / "patient.dcm").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a medgen demo data folder"):
        write_demo_dataset(foreign, count=1, size=32)
    assert (foreign / "dente" / "patient.dcm").read_bytes() == b"x"


def test_cli(tmp_path, capsys):
    argv = ["demo-data", str(tmp_path / "o"), "--spatial-dims", "2", "--count", "2", "--size", "32", "--seed", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "4 synthetic" in out
    assert len(list((tmp_path / "o").glob("*/*.dcm"))) == 4
    assert main(["demo-data", str(tmp_path / "x"), "--count", "0"]) == 2
    assert "count" in capsys.readouterr().err
