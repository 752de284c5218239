"""`medgen sample` on a latent diffusion checkpoint: class, count, size, sampler, guidance, seed, formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from conftest import ROOT, TINY_LDM
from medgen.cli import main
from medgen.data.demo import write_demo_dataset
from medgen.config import load_config
from medgen.inference.sample import BATCH_SIZE_TOLERANCE
from medgen.io import read_image
from medgen.io.discovery import discover_items
from medgen.training.ldm import LDMTrainer
from test_train_ldm import vae_checkpoint


@pytest.fixture(scope="module")
def ldm(demo2d, tmp_path_factory) -> Path:
    """A latent diffusion checkpoint after a few training steps (tiny UNet on demo2d: 40x40 images)."""
    root = tmp_path_factory.mktemp("ldm_sample")
    vae = vae_checkpoint(root / "vae.pt")
    cfg = load_config(ROOT / "ldm_config.json", [*TINY_LDM, f"data_base_dir={demo2d}", f"run_dir={root / 'run'}",
                                                  f"autoencoder_checkpoint={vae}"])
    trainer = LDMTrainer(cfg, train_items=discover_items(cfg)[0], val_items=[])
    for i in range(0, 8, 2):  # four steps on both classes' crops
        batch = [trainer.train_ds[(0, j)] for j in (i, i + 1)]
        trainer.train_step(torch.stack([b["image"] for b in batch]), torch.tensor([b["label"] for b in batch]))
    trainer.save()
    return root / "run" / "checkpoints" / "last.pt"


def _sample(ckpt, out, *extra) -> int:
    return main(["sample", "--checkpoint", str(ckpt), "--output", str(out), *extra])


def _images(folder: Path) -> list[np.ndarray]:
    return [read_image(p)[0] for p in sorted(folder.iterdir())]


def test_writes_count_images_of_the_training_size_and_same_seed_same_files(ldm, tmp_path):
    args = ("--class", "dente", "--count", "4", "--steps", "3")
    assert _sample(ldm, tmp_path / "a", *args) == 0
    assert _sample(ldm, tmp_path / "b", *args) == 0
    assert _sample(ldm, tmp_path / "c", "--class", "dente", "--count", "1", "--steps", "3", "--seed", "1") == 0
    assert _sample(ldm, tmp_path / "d", *args, "--batch-size", "3") == 0  # default 4
    files = sorted((tmp_path / "a").iterdir())
    assert [p.name for p in files] == [f"sample_0000{i}.png" for i in range(4)]
    a, b, c = _images(tmp_path / "a"), _images(tmp_path / "b"), _images(tmp_path / "c")
    assert all(x.shape == (1, 40, 40) for x in a)  # demo2d images are 40x40
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(files, sorted((tmp_path / "b").iterdir())))
    # ddim draws no noise after the first: another batch size gives the same images up to rounding (in 16-bit
    # files: a value near the edge of two grey levels may land on either)
    d = np.stack(_images(tmp_path / "d")) / 65535
    np.testing.assert_allclose(d, np.stack(a) / 65535, rtol=0, atol=BATCH_SIZE_TOLERANCE)
    assert not np.array_equal(a[0], c[0])
    assert len({x.tobytes() for x in a}) == 4  # four different samples


def test_stochastic_ddpm_sampler_is_reproducible_and_classes_differ(ldm, tmp_path):
    args = ("--count", "2", "--scheduler", "ddpm", "--steps", "4", "--guidance", "3")
    assert _sample(ldm, tmp_path / "a", "--class", "dente", *args) == 0
    assert _sample(ldm, tmp_path / "b", "--class", "dente", *args) == 0
    assert _sample(ldm, tmp_path / "c", "--class", "edente", *args) == 0
    a, b, c = _images(tmp_path / "a"), _images(tmp_path / "b"), _images(tmp_path / "c")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])  # the class embedding changes the sample from the same noise


def test_any_size_and_synthetic_dicom_without_patient_data(ldm, tmp_path):
    assert _sample(ldm, tmp_path / "d", "--class", "edente", "--count", "2", "--size", "25", "51", "--format", "dcm",
                   "--steps", "2") == 0
    files = sorted((tmp_path / "d").iterdir())
    datasets = [pydicom.dcmread(p) for p in files]
    assert all((ds.Rows, ds.Columns) == (25, 51) for ds in datasets)
    assert all(ds.ConversionType == "SYN" and not ds.get("PatientName") and not ds.get("PatientID") for ds in datasets)
    assert len({ds.SOPInstanceUID for ds in datasets}) == 2 and datasets[0].StudyInstanceUID != datasets[1].StudyInstanceUID


@pytest.mark.parametrize("extra, message", [
    ((), "is class-conditional; give --class dente or --class edente"),
    (("--class", "dente", "--scheduler", "rflow"), "trained with scheduler ddpm samples with ddim or ddpm, not rflow"),
    (("--class", "dente", "--size", "32"), "--size 32 must be 2 positive sizes (H W)"),
    (("--class", "dente", "--format", "png", "--steps", "1000"), "--steps 1000 must be between 1 and the model's 100"),
])
def test_bad_sampling_arguments_are_one_line(ldm, tmp_path, capsys, extra, message):
    assert _sample(ldm, tmp_path / "x", "--count", "1", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def _check(samples, train, out, *extra) -> int:
    return main(["check-copies", "--samples", str(samples), "--train", str(train), "--output", str(out), *extra])


def test_check_copies_flags_a_copied_training_image_and_cannot_judge_noise(ldm, demo2d, tmp_path, capsys):
    """The LDM here took four steps: its samples are noise, unlike every training image, and the check says it
    cannot judge them instead of calling them clean; a training radiograph copied among them is flagged."""
    import json
    import shutil

    samples = tmp_path / "samples"
    assert _sample(ldm, samples, "--class", "dente", "--count", "3", "--steps", "3") == 0
    capsys.readouterr()
    assert _check(samples, demo2d, tmp_path / "noise") == 1
    report = json.loads((tmp_path / "noise" / "copy_check.json").read_text())
    assert report["flagged"] == [] and report["num_train"] == 10 and report["num_samples"] == 3
    assert len(report["unlike"]) == 3 and report["threshold"] < report["unlike_distance"]
    assert "3 of 3 samples are unlike every training image" in capsys.readouterr().out
    # a training radiograph copied among the samples: found, and the exit code says so
    copied = next((demo2d / "edente").glob("*.dcm"))
    shutil.copy(copied, samples / "copied.dcm")
    assert _check(samples, demo2d, tmp_path / "leak") == 1
    report = json.loads((tmp_path / "leak" / "copy_check.json").read_text())
    assert report["flagged"] == ["copied.dcm"] and "copied.dcm" not in report["unlike"]
    assert report["samples"][0]["nearest_train"] == f"edente/{copied.name}" and report["samples"][0]["distance"] < 1e-6
    assert "1 closer than" in capsys.readouterr().out
    sheet = read_image(tmp_path / "leak" / "closest_pairs.png")[0]
    assert sheet.shape[-1] == 2 * 128 + 4  # sample | training image
    # held-out demo images of the same kind as the training set: judged, and clean
    held_out = tmp_path / "held_out"
    write_demo_dataset(held_out, spatial_dims=2, count=3, size=40, seed=99)
    assert _check(held_out, demo2d, tmp_path / "real") == 0
    report = json.loads((tmp_path / "real" / "copy_check.json").read_text())
    assert report["flagged"] == [] and report["unlike"] == []


def test_check_copies_threshold_can_be_given(ldm, demo2d, tmp_path):
    assert _check(demo2d / "dente", demo2d, tmp_path / "o", "--threshold", "0.5") == 1  # the training images themselves


def test_progress_counts_denoising_steps(ldm, tmp_path, capsys):
    """One batch of a large image can take minutes: the bar moves with every denoising step of every batch."""
    from medgen.inference.sample import sample_ldm_to_files

    sample_ldm_to_files(ldm, 3, tmp_path / "s", class_name="dente", steps=4, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "denoising 3 images" in err and "8/8" in err  # 2 batches x 4 steps
