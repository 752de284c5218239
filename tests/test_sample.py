"""`medgen sample`: N images per format, the EMA generator, reproducible noise, synthetic DICOM with fresh UIDs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from medgen.cli import main
from medgen.config import load_config
from medgen.config.wgan import WGANConfig
from medgen.inference.sample import BATCH_SIZE_TOLERANCE
from medgen.io import read_image
from medgen.io.discovery import discover_items
from medgen.models.wgan import build_generator
from medgen.training.wgan import WGANTrainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["generator.g_channels=32", "generator.min_channels=8", "critic.d_channels=8", "wgan_train.batch_size=2",
        "num_workers=0", "scan_workers=0", "cache=none", "wgan_train.ema_decay=0.5"]


@pytest.fixture(scope="module")
def checkpoint(demo2d, tmp_path_factory) -> Path:
    """An EMA-enabled checkpoint whose raw generator differs from its EMA copy, and whose EMA generator's images
    vary with the noise (a freshly initialised one draws nearly the same grey image from any noise)."""
    run = tmp_path_factory.mktemp("wgan_sample") / "run"
    cfg = load_config(ROOT / "wgan_config.json", [*TINY, f"data_base_dir={demo2d}", f"run_dir={run}"], cls=WGANConfig)
    trainer = WGANTrainer(cfg, train_items=discover_items(cfg)[0], val_items=[])
    trainer.generator_step(torch.stack([trainer.train_ds[i]["image"] for i in range(2)]) * 2 - 1)  # one real step
    with torch.no_grad():  # move both weight sets, each its own way
        for p in trainer.ema.module.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for p in trainer.generator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer.save()
    return run / "checkpoints" / "last.pt"


def _sample(checkpoint, out, fmt="nii", count=3, *extra) -> int:
    return main(["sample", "--checkpoint", str(checkpoint), "--count", str(count), "--output", str(out),
                 "--format", fmt, *extra])


def _images(folder: Path) -> list[np.ndarray]:
    return [read_image(p)[0] for p in sorted(folder.iterdir())]


@pytest.mark.parametrize("fmt, suffix", [("png", ".png"), ("nii", ".nii.gz"), ("dcm", ".dcm")])
def test_writes_count_images_in_each_format(checkpoint, tmp_path, fmt, suffix):
    out = tmp_path / fmt
    assert _sample(checkpoint, out, fmt, 3, "--batch-size", "2") == 0
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"sample_0000{i}{suffix}" for i in range(3)]
    for image in _images(out):
        assert image.shape[-2:] == (64, 64) and image.shape[0] == 1
    assert not np.array_equal(_images(out)[0], _images(out)[1])  # different noise per image


def test_dicom_samples_are_marked_synthetic_with_fresh_uids(checkpoint, tmp_path):
    uids = set()
    for name in ("a", "b"):
        assert _sample(checkpoint, tmp_path / name, "dcm", 2) == 0
        for path in sorted((tmp_path / name).iterdir()):
            ds = pydicom.dcmread(path)
            assert ds.ConversionType == "SYN" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
            assert "Synthetic" in ds.ImageComments and ds.PatientName == "" and ds.PatientID == ""
            uids |= {ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID}
    assert len(uids) == 4 * 3  # no UID reused, within a run or across runs


def test_samples_come_from_the_ema_generator_and_depend_on_the_seed(checkpoint, tmp_path):
    for name, batch_size, seed in (("b3", "3", "7"), ("b3_again", "3", "7"), ("b1", "1", "7"), ("other", "3", "8")):
        assert _sample(checkpoint, tmp_path / name, "nii", 3, "--batch-size", batch_size, "--seed", seed) == 0
    # same seed and batch size: the same files, byte for byte
    for a, b in zip(sorted((tmp_path / "b3").iterdir()), sorted((tmp_path / "b3_again").iterdir()), strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    # another batch size: the same noise per image through kernels that may round differently, so close, not equal
    got = np.stack(_images(tmp_path / "b3"))[:, 0]
    np.testing.assert_allclose(np.stack(_images(tmp_path / "b1"))[:, 0], got, rtol=0, atol=BATCH_SIZE_TOLERANCE)
    assert not np.allclose(got, np.stack(_images(tmp_path / "other"))[:, 0], atol=1e-3)

    ckpt = torch.load(checkpoint, weights_only=True)
    noise = torch.randn(3, 100, generator=torch.Generator().manual_seed(7))

    def expected(state):
        net = build_generator({"g_channels": 32, "min_channels": 8, "z_dim": 100}, 64)
        net.load_state_dict(state)
        with torch.no_grad():
            return ((net.eval()(noise) + 1) / 2).clamp(0, 1)[:, 0].numpy()

    ema = {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    np.testing.assert_allclose(got, expected(ema), atol=1e-6)
    assert not np.allclose(got, expected(ckpt["generator"]), atol=1e-3)


def test_refuses_to_overwrite_and_rejects_other_checkpoints(checkpoint, tmp_path, capsys):
    assert _sample(checkpoint, tmp_path / "out", "png", 2) == 0
    assert _sample(checkpoint, tmp_path / "out", "png", 2) == 2
    assert "already exists" in capsys.readouterr().err
    other = tmp_path / "vae.pt"
    torch.save({"autoencoder": {}, "config": {}}, other)
    assert _sample(other, tmp_path / "vae_out", "png", 1) == 2
    assert "is not a WGAN/GAN checkpoint" in capsys.readouterr().err


def test_a_generator_that_never_stepped_is_refused_unless_forced(demo2d, tmp_path, capsys):
    cfg = load_config(ROOT / "wgan_config.json", [*TINY, f"data_base_dir={demo2d}", f"run_dir={tmp_path / 'run'}"],
                      cls=WGANConfig)
    WGANTrainer(cfg, train_items=discover_items(cfg)[0], val_items=[]).save()
    untrained = tmp_path / "run" / "checkpoints" / "last.pt"
    assert _sample(untrained, tmp_path / "out", "png", 1) == 2
    assert "never trained" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert _sample(untrained, tmp_path / "out", "png", 1, "--force") == 0
