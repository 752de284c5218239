"""Public data preparation: a fake clone of each repository (real names and folders, tiny files) becomes the
train/val data folders medgen's config keys take, by the split lists; the committed lists are the stated draw."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import ROOT, TRAIN, VAL, write_public_clones
from medgen.cli import main
from medgen.config import RunConfig
from medgen.data.public import (
    DEFAULT_SPLITS,
    PANORAMIC_FOLDER,
    PANORAMIC_REPOSITORY,
    draw_panoramic_split,
    panoramic_class,
    read_panoramic_split,
)
from medgen.errors import InvalidValueError
from medgen.io.discovery import discover_items
from medgen.io.reader import read_image


@pytest.fixture
def sources(tmp_path):
    return write_public_clones(tmp_path)


def test_prepare_writes_the_layout_medgen_trains_and_validates_on(sources, tmp_path, capsys):
    panoramics, ct, splits = sources
    out = tmp_path / "out"
    args = ["prepare-public-data", "--panoramics", str(panoramics), "--ct", str(ct), "--split-lists", str(splits), str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "panoramic/train: 4 images (dente 2, edente 2)" in printed
    assert "panoramic/val: 2 images (dente 1, edente 1)" in printed
    assert "ct/val/edente/CT_AVM_z014-019.nii.gz: 16x12x6 voxels" in printed

    written = sorted(p.relative_to(out / "panoramic").as_posix() for p in (out / "panoramic").rglob("*") if p.is_file())
    # 1-4 dente, 7-10 edente; 5 (implants) and 6 (supernumerary teeth) stay out
    assert written == sorted(
        [f"train/dente/{n}" for n in TRAIN[:2]] + [f"train/edente/{n}" for n in TRAIN[2:]]
        + ["val/dente/cate2-00005.jpg", "val/edente/cate8-00006.jpg"]
    )
    source = panoramics / PANORAMIC_FOLDER
    assert (out / "panoramic/val/dente/cate2-00005.jpg").read_bytes() == (source / "cate2-00005.jpg").read_bytes()

    # the folders are data_base_dir and val_dir as they stand
    cfg = RunConfig(data_base_dir=str(out / "panoramic/train"), val_dir=str(out / "panoramic/val"), data_source="both")
    train, val = discover_items(cfg)
    assert Counter(i["label"] for i in train) == {"dente": 2, "edente": 2}
    assert sorted(Path(i["image"]).name for i in val) == sorted(VAL)
    assert read_image(val[0]["image"])[0].shape == (1, 24, 32)

    # the CT slabs: the volume's own voxels at their own positions, the gap in neither
    original = nib.load(ct / "CT_AVM.nii.gz")
    for split, (start, stop) in (("train", (0, 12)), ("val", (14, 20))):
        (path,) = (out / "ct" / split / "edente").iterdir()
        slab = nib.load(path)
        np.testing.assert_array_equal(slab.get_fdata(), original.get_fdata()[:, :, start:stop])
        np.testing.assert_allclose(slab.affine, original.affine @ np.array(
            [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, start], [0, 0, 0, 1]]))
    cfg = RunConfig(data_base_dir=str(out / "ct/train"), val_dir=str(out / "ct/val"), spatial_dims=3)
    assert [len(items) for items in discover_items(cfg)] == [1, 1]

    # a second run never mixes into what is there
    assert main(args) == 2
    assert "already holds files" in capsys.readouterr().err


def test_a_missing_listed_file_stops_with_one_line_before_writing(sources, tmp_path):
    panoramics, _, splits = sources
    (panoramics / PANORAMIC_FOLDER / "cate8-00006.jpg").unlink()
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts/prepare_public_data.py"), "--panoramics", str(panoramics),
         "--split-lists", str(splits), str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1
    assert "cate8-00006.jpg" in run.stderr and PANORAMIC_REPOSITORY in run.stderr
    assert not out.exists()


def test_bad_inputs_are_named(sources, tmp_path, capsys):
    panoramics, ct, splits = sources
    out = str(tmp_path / "out")
    assert main(["prepare-public-data", out]) == 2
    assert "--panoramics CLONE and/or --ct CLONE" in capsys.readouterr().err
    # a clone of the wrong repository for the CT
    assert main(["prepare-public-data", "--ct", str(panoramics), "--split-lists", str(splits), out]) == 2
    assert "--ct must be a clone of https://github.com/neurolabusc/niivue-images" in capsys.readouterr().err
    nib.save(nib.Nifti1Image(np.zeros((16, 12, 10), np.int16), np.eye(4)), ct / "CT_AVM.nii.gz")
    assert main(["prepare-public-data", "--ct", str(ct), "--split-lists", str(splits), out]) == 2
    assert "has shape [16, 12, 10], not the [16, 12, 20]" in capsys.readouterr().err
    # a list naming a left-out category
    (splits / "panoramic_val.txt").write_text("cate5-00007.jpg\n")
    with pytest.raises(InvalidValueError, match="cate5-00007.jpg is not a panoramic of categories 1-4 or 7-10"):
        read_panoramic_split(splits)


def test_committed_split_is_the_stated_draw():
    split = read_panoramic_split(DEFAULT_SPLITS)
    assert draw_panoramic_split(split["val"] + split["train"]) == split  # seed 0, 15%: reproducible from names
    counts = {s: Counter(panoramic_class(n) for n in names) for s, names in split.items()}
    assert counts == {"train": {"dente": 120, "edente": 183}, "val": {"dente": 22, "edente": 32}}
    names = set(split["train"]) | set(split["val"])
    assert "cate4-00107.jpg" not in names  # byte-identical to cate4-00101.jpg
    assert ("cate1-00044.jpg" in split["val"]) == ("cate3-00009.jpg" in split["val"])  # one patient, one split
    categories = Counter(n.split("-")[0] for n in split["val"])
    assert set(categories) == {f"cate{c}" for c in (1, 2, 3, 4, 7, 8, 9, 10)}  # every category is held out


def test_draw_is_stratified_and_keeps_one_patient_in_one_split():
    names = [f"cate{c}-{i:05d}.jpg" for c in (1, 3, 5, 6, 8) for i in range(40)] + ["cate1-00044.jpg", "cate3-00009.jpg"]
    split = draw_panoramic_split(list(reversed(names)), seed=3)
    assert split == draw_panoramic_split(names, seed=3)  # the order names come in does not matter
    assert split != draw_panoramic_split(names, seed=4)
    val = Counter(n.split("-")[0] for n in split["val"])
    assert val["cate5"] == val["cate6"] == 0 and all(5 <= val[c] <= 7 for c in ("cate1", "cate3", "cate8"))
    assert ("cate1-00044.jpg" in split["val"]) == ("cate3-00009.jpg" in split["val"])
