"""Latent diffusion training: config, latent cache, scale factor, conditioning, EMA, resume, 3D, torchrun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, TINY_LDM, torchrun
from medgen.config import ConfigError, load_config, to_dict
from medgen.io.checkpoint import load_checkpoint, save_checkpoint
from medgen.models.autoencoder import build_autoencoder


def vae_checkpoint(path: Path, *overrides: str) -> Path:
    """A tiny autoencoder in the VAE trainer's checkpoint format (downsampling 2, 2 latent channels)."""
    cfg = load_config(ROOT / "vae_config.json", [*TINY, *overrides])
    torch.manual_seed(0)
    model = build_autoencoder(cfg.autoencoder_def)
    return save_checkpoint({"autoencoder": model.state_dict(), "config": to_dict(cfg), "epoch": 1}, path)


@pytest.fixture(scope="module")
def vae2d(tmp_path_factory) -> Path:
    return vae_checkpoint(tmp_path_factory.mktemp("vae2d") / "best.pt")


def sets(demo, run, vae, *extra) -> list[str]:
    return [f"--set={o}" for o in (*TINY_LDM, f"data_base_dir={demo}", f"run_dir={run}", f"autoencoder_checkpoint={vae}", *extra)]


def train_ldm(argv: list[str]) -> int:
    from medgen.cli import main

    return main(["train-ldm", *argv])


@pytest.fixture(scope="module")
def run2d(demo2d, vae2d, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ldm") / "run"
    assert train_ldm(["ldm_config.json", *sets(demo2d, run, vae2d)]) == 0
    return run


def test_config_file_is_typed_and_recognised():
    cfg = load_config(ROOT / "ldm_config.json")
    assert type(cfg).__name__ == "LDMConfig" and cfg.conditional
    assert to_dict(cfg) == json.loads((ROOT / "ldm_config.json").read_text())


@pytest.mark.parametrize("override, message", [
    ("ldm_train.latent_patch_size=[30,64]", "ldm_train.latent_patch_size=[30, 64]: 30 is not divisible by 4"),
    ("ldm_train.latent_patch_size=[64]", "has 1 entries but spatial_dims=2"),
    ("ldm_train.label_dropout=1", "ldm_train.label_dropout=1.0 must be in [0, 1)"),
    ("ldm_train.schedular=ddpm", "did you mean ldm_train.scheduler?"),
    ("diffusion_def.num_head_channels=48", "diffusion_def.num_head_channels=48 does not divide 256"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(ROOT / "ldm_config.json", [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_autoencoder_checkpoint_is_one_line(demo2d, tmp_path, capsys):
    assert train_ldm(["ldm_config.json", *sets(demo2d, tmp_path / "r", tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "autoencoder_checkpoint=" in err and "medgen train-vae" in err


def test_two_epochs_write_scale_factor_ema_and_tensorboard(run2d):
    ckpt = load_checkpoint(run2d / "checkpoints" / "last.pt")  # weights_only
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 8  # 8 training images, batch 2
    assert {"unet", "ema", "opt", "latent_stats", "autoencoder", "autoencoder_config"} <= ckpt.keys()
    stats = ckpt["latent_stats"]
    assert stats["latent_shape"] == [20, 20] and stats["image_shape"] == [40, 40]  # demo2d: 40x40, downsampling 2
    # EMA weights differ from the raw weights (averaged), and the class embedding exists (edente, dente, none)
    ema = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k != "n_averaged"}
    assert not all(torch.equal(ema[k], v) for k, v in ckpt["unet"].items())
    assert ckpt["unet"]["class_embedding.weight"].shape[0] == 3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run2d / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert {"loss/diffusion", "lr/unet", "latent/scale_factor", "val/loss", "throughput/images_per_s",
            "val/nearest_train_distance", "val/copy_share"} <= set(acc.Tags()["scalars"])
    assert 0 < acc.Scalars("val/nearest_train_distance")[-1].value <= 2
    assert [e.value for e in acc.Scalars("val/copy_share")] == [0.0, 0.0]  # two epochs of noise copy no one
    assert {"val/samples_edente", "val/samples_dente"} <= set(acc.Tags()["images"])
    grid = acc.Images("val/samples_dente")[-1]
    assert grid.height == 2 * (40 + 2)  # 2 samples at the training images' full size


def test_scale_factor_is_one_over_std_of_all_training_latents(run2d):
    from medgen.config import VAEConfig
    from medgen.data.latents import load_latent
    from medgen.data.transforms import deterministic_transforms
    from medgen.io.discovery import discover_items
    from medgen.models.autoencoder import load_autoencoder
    from medgen.models.tiled import tiling_for
    from medgen.models.tiled import tiled_encode

    ckpt = load_checkpoint(run2d / "checkpoints" / "last.pt")
    latents = sorted((run2d / "cache" / "latents").glob("*.pt"))
    assert len(latents) == 10 and all(load_latent(p)["z_mu"].shape == (2, 20, 20) for p in latents)  # 8 train + 2 val, once
    cfg = load_config(run2d / "config.json")
    train, _ = discover_items(cfg)
    # direct computation: encode every training image again, the std of all their values at once
    vae_cfg = VAEConfig.from_dict(ckpt["autoencoder_config"])
    model = load_autoencoder(cfg.autoencoder_checkpoint)
    chain = deterministic_transforms(vae_cfg, vae_cfg.autoencoder_train.patch_size)
    values = []
    for it in train:
        data = {"image": it["image"]}
        for t in chain:
            data = t(data)
        values.append(tiled_encode(model, torch.as_tensor(data["image"])[None].float(), tiling_for(vae_cfg))[0].flatten())
    values = torch.cat(values).double()
    assert ckpt["latent_stats"]["scale_factor"] == pytest.approx(1 / values.std().item(), rel=1e-6)
    assert ckpt["latent_stats"]["count"] == values.numel() == 8 * 2 * 20 * 20


def test_latent_cache_is_reused_and_invalidated_by_a_new_autoencoder(demo2d, run2d, tmp_path):
    cache = tmp_path / "cache"
    vae = vae_checkpoint(tmp_path / "vae.pt")
    extra = (f"cache_dir={cache}", "ldm_train.max_epochs=1", "data_source=edente")
    assert train_ldm(["ldm_config.json", *sets(demo2d, tmp_path / "a", vae, *extra)]) == 0
    first = {p.name: p.stat().st_mtime_ns for p in (cache / "latents").glob("*.pt")}
    assert len(first) == 5  # 4 training + 1 validation image
    assert train_ldm(["ldm_config.json", *sets(demo2d, tmp_path / "b", vae, *extra)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (cache / "latents").glob("*.pt")} == first  # nothing re-encoded
    vae_checkpoint(vae, "seed=1")  # the autoencoder retrained in place: another file stamp
    assert train_ldm(["ldm_config.json", *sets(demo2d, tmp_path / "c", vae, *extra)]) == 0
    assert len(list((cache / "latents").glob("*.pt"))) == 10


def test_stop_after_epoch_one_and_resume_is_bitwise_equal(demo2d, vae2d, run2d, tmp_path):
    run = tmp_path / "resumed"
    assert train_ldm(["ldm_config.json", *sets(demo2d, run, vae2d, "ldm_train.max_epochs=1")]) == 0
    assert train_ldm(["ldm_config.json", *sets(demo2d, run, vae2d, "resume_ckpt=true")]) == 0
    full = load_checkpoint(run2d / "checkpoints" / "last.pt")
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed["epoch"] == 2
    for key in ("unet", "ema"):
        assert all(torch.equal(full[key][k], resumed[key][k]) for k in full[key]), key
    assert full["latent_stats"] == resumed["latent_stats"]


def test_gradient_accumulation_and_one_class_unconditional(demo2d, vae2d, tmp_path):
    run = tmp_path / "edente"
    argv = sets(demo2d, run, vae2d, "data_source=edente", "ldm_train.grad_accum_steps=2", "ldm_train.max_epochs=1")
    assert train_ldm(["ldm_config.json", *argv]) == 0
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert "class_embedding.weight" not in ckpt["unet"]
    # 4 edente training images, batch 2: 2 micro-steps, one optimiser step
    assert ckpt["global_step"] == 2 and ckpt["opt"]["state"][0]["step"].item() == 1
    assert ckpt["accumulated_grads"] == {}


def test_3d_volumes_train_one_epoch(demo3d, tmp_path):
    vae = vae_checkpoint(tmp_path / "vae3d.pt", "spatial_dims=3", "autoencoder_def.spatial_dims=3",
                         "autoencoder_train.patch_size=[16,16,16]")
    run = tmp_path / "run3d"
    argv = sets(demo3d, run, vae, "spatial_dims=3", "ldm_train.latent_patch_size=[4,8,8]", "ldm_train.max_epochs=1",
                "num_val_images=1")
    assert train_ldm(["ldm_config.json", *argv]) == 0
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["latent_stats"]["image_shape"] == [16, 16, 16] and ckpt["epoch"] == 1


def test_torchrun_two_processes_train_two_epochs(demo2d, vae2d, run2d, tmp_path):
    """The done-when: `torchrun --nproc_per_node=2 scripts/train_ldm.py ldm_config.json` with small settings."""
    run = tmp_path / "ddp"
    torchrun(["--standalone", "--nproc_per_node=2", "scripts/train_ldm.py", "ldm_config.json", *sets(demo2d, run, vae2d)])
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert ckpt["opt"]["param_groups"][0]["lr"] == pytest.approx(2e-3)  # lr x world size
    # the scale factor summed over both ranks' shards equals the single-process one
    single = load_checkpoint(run2d / "checkpoints" / "last.pt")["latent_stats"]
    assert ckpt["latent_stats"]["scale_factor"] == pytest.approx(single["scale_factor"], rel=1e-9)
    assert ckpt["latent_stats"]["count"] == single["count"]


def test_copies_among_the_validation_samples_are_logged_warned_about_and_can_stop_the_run(demo2d, vae2d, tmp_path,
                                                                                          monkeypatch, caplog):
    """Samples that are training images (as a memorising model's would be): val/copy_share 1, a warning, and
    with ldm_train.stop_on_copies the run ends after that validation with last.pt written."""
    import logging

    from medgen.data.transforms import read_windowed
    from medgen.training.ldm import LDMTrainer

    def memorised(self, count=None):
        images = [read_windowed(it["image"], self.cfg.intensity_percentiles) for it in self.train_items[:2]]
        return {"dente": torch.stack(images)}

    monkeypatch.setattr(LDMTrainer, "samples", memorised)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="medgen.train"):
        assert train_ldm(["ldm_config.json", *sets(demo2d, run, vae2d, "ldm_train.max_epochs=3",
                                                    "ldm_train.stop_on_copies=true")]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1  # stopped after the first validation
    assert "100% of the samples are copies of training images" in caplog.text
    assert "stopping after epoch 1 (ldm_train.stop_on_copies=true)" in caplog.text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("val/copy_share")] == [1.0]


def test_best_checkpoint_is_the_lowest_validation_loss_also_after_resume(demo2d, vae2d, tmp_path, monkeypatch):
    """best.pt follows the lowest val/loss (the held-out diffusion loss rises when a small set is memorised), and a
    resumed run compares against the best loss its checkpoint holds, not against a fresh start."""
    from medgen.training.ldm import LDMTrainer

    losses = {1: 0.5, 2: 0.3, 3: 0.4, 4: 0.35, 5: 0.2}
    monkeypatch.setattr(LDMTrainer, "validate", lambda self: {"loss": losses[self.epoch]})
    run = tmp_path / "run"
    assert train_ldm(["ldm_config.json", *sets(demo2d, run, vae2d, "ldm_train.max_epochs=3")]) == 0
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert (best["epoch"], best["best_loss"]) == (2, 0.3)
    assert train_ldm(["ldm_config.json", *sets(demo2d, run, vae2d, "ldm_train.max_epochs=4", "resume_ckpt=true")]) == 0
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 2  # 0.35 after resuming is not better
    assert train_ldm(["ldm_config.json", *sets(demo2d, run, vae2d, "ldm_train.max_epochs=5", "resume_ckpt=true")]) == 0
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert (best["epoch"], best["best_loss"]) == (5, 0.2)
