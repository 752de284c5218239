"""The main job: single process, DDP on gloo (real torchrun processes), resume, restart, two nodes, 3D."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, free_port, stop_preempt_resume, torchrun, train_vae as main
from medgen.io.checkpoint import load_checkpoint


def _tb_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_single_process_run_writes_checkpoints_tensorboard_and_run_info(demo2d, tmp_path):
    run = tmp_path / "run"
    assert main(["vae_config.json", *[f"--set={o}" for o in TINY], f"--set=data_base_dir={demo2d}", f"--set=run_dir={run}"]) == 0
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")  # weights_only=True
    assert {"autoencoder", "discriminator", "opt_g", "opt_d", "sched_g", "sched_d", "scaler_g", "scaler_d",
            "epoch", "global_step", "rng", "config"} <= ckpt.keys()
    assert ckpt["epoch"] == 2 and ckpt["global_step"] > 0
    assert (run / "checkpoints" / "best.pt").is_file()
    assert json.loads((run / "config.json").read_text())["autoencoder_def"]["channels"] == [8, 16]
    assert "torch" in json.loads((run / "versions.json").read_text())
    acc = _tb_tags(run)
    scalars = set(acc.Tags()["scalars"])
    for tag in ("loss/recon", "loss/kl", "loss/gen_adv", "loss/disc_real", "loss/disc_fake", "lr/generator",
                "throughput/images_per_s", "val/psnr", "val/ssim"):
        assert tag in scalars, tag
    assert "val/input_vs_reconstruction" in acc.Tags()["images"]
    # adversarial terms are off during the warm-up epoch and on afterwards
    gen_adv = [e.value for e in acc.Scalars("epoch/loss/gen_adv")]
    assert gen_adv[0] == 0 and gen_adv[1] > 0


def _ddp_run(demo, run, extra=(), nproc=2, env=None, torchrun_args=(), check=True):
    sets = [f"--set={o}" for o in (*TINY, f"data_base_dir={demo}", f"run_dir={run}", *extra)]
    return torchrun(["--standalone", f"--nproc_per_node={nproc}", *torchrun_args, "tests/ddp_worker.py", "vae_config.json", *sets],
                    env=env, check=check)


def _two_nodes(demo, run, extra=()) -> list[str]:
    """Two torchrun agents on loopback (--nnodes=2), one process each, as two machines would start them."""
    import os
    import subprocess
    import sys

    port = free_port()
    sets = [f"--set={o}" for o in (*TINY, f"data_base_dir={demo}", f"run_dir={run}", *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    procs = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                          "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
                          "tests/ddp_worker.py", "vae_config.json", *sets],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return outputs


@pytest.fixture(scope="module")
def ddp_two_epochs(demo2d, tmp_path_factory):
    """The uninterrupted 2-process run the others are compared with: two nodes of one process each (the same
    ranks and world size as --nproc_per_node=2 on one node, so the same weights, bit for bit)."""
    run = tmp_path_factory.mktemp("ddp") / "full"
    _two_nodes(demo2d, run)
    return run


def test_two_processes_scale_lr_and_end_with_identical_weights(ddp_two_epochs):
    r0 = torch.load(ddp_two_epochs / "weights_rank0.pt", weights_only=True)
    r1 = torch.load(ddp_two_epochs / "weights_rank1.pt", weights_only=True)
    assert r0["lr_g"] == pytest.approx(2 * 1e-4) and r0["lr_d"] == pytest.approx(2 * 1e-4)
    assert _same_weights(r0["autoencoder"], r1["autoencoder"])
    assert _same_weights(r0["discriminator"], r1["discriminator"])
    # the disk cache holds one decoded copy per image, shared by both ranks (not one per rank)
    cached = list((ddp_two_epochs / "cache").rglob("*.npy"))
    assert len(cached) == 10  # demo2d: 5 edente + 5 dente
    versions = json.loads((ddp_two_epochs / "versions.json").read_text())
    assert versions["world_size"] == 2 and versions["effective_lr"]["generator"] == pytest.approx(2e-4)
    # the validation grid holds images from both ranks' shards (one validation image each here): 2 rows of 32 + 2
    (grid,) = _tb_tags(ddp_two_epochs).Images("val/input_vs_reconstruction")[-1:]
    assert grid.height == 2 * (32 + 2)
    # the process group is gone when the command returns: no gloo thread lives on into interpreter exit
    for rank in (0, 1):
        threads = (ddp_two_epochs / f"threads_rank{rank}.txt").read_text().split()
        assert threads and not any("gloo" in t for t in threads), threads


def test_stop_after_epoch_one_then_sigterm_on_one_rank_mid_epoch_stops_both_and_resumes_bitwise_equal(
        demo2d, ddp_two_epochs, tmp_path):
    resumed, proc = stop_preempt_resume(_ddp_run, demo2d, tmp_path / "preempted", "autoencoder_train.max_epochs")
    assert resumed["epoch"] == 2
    log = proc.stdout + proc.stderr  # a log file, as `make demo > log` or a cluster writes it
    assert "\r" not in log and "epoch 2/2: recon=" in log, log[-2000:]
    assert "step 2/2:" not in log  # the epoch's line, not a copy of it as the last step's line
    assert "at epoch 2 step 1" in log  # the resume names the position the interrupt named
    full = load_checkpoint(ddp_two_epochs / "checkpoints" / "last.pt")
    assert _same_weights(full["autoencoder"], resumed["autoencoder"])
    assert _same_weights(full["discriminator"], resumed["discriminator"])


def test_worker_killed_mid_epoch_restarts_from_last_checkpoint(demo2d, ddp_two_epochs, tmp_path):
    run = tmp_path / "restarted"
    proc = _ddp_run(demo2d, run, env={"MEDGEN_TEST_CRASH_EPOCH": "1"}, torchrun_args=["--max-restarts=1"])
    assert "resumed from" in proc.stderr + proc.stdout
    restarted = load_checkpoint(run / "checkpoints" / "last.pt")
    assert restarted["epoch"] == 2
    full = load_checkpoint(ddp_two_epochs / "checkpoints" / "last.pt")
    assert _same_weights(full["autoencoder"], restarted["autoencoder"])


def test_two_nodes_on_loopback_train(ddp_two_epochs):
    ckpt = load_checkpoint(ddp_two_epochs / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    r0 = torch.load(ddp_two_epochs / "weights_rank0.pt", weights_only=True)
    r1 = torch.load(ddp_two_epochs / "weights_rank1.pt", weights_only=True)
    assert _same_weights(r0["autoencoder"], r1["autoencoder"])


def test_3d_volumes_train_with_tri_planar_validation_images(demo3d, tmp_path):
    run = tmp_path / "run3d"
    sets = [*TINY, "spatial_dims=3", "autoencoder_def.spatial_dims=3", "autoencoder_train.patch_size=[16,16,16]",
            "autoencoder_train.max_epochs=1", f"data_base_dir={demo3d}", f"run_dir={run}"]
    assert main(["vae_config.json", *[f"--set={o}" for o in sets]]) == 0
    acc = _tb_tags(run)
    (image,) = acc.Images("val/input_vs_reconstruction")
    # one row per sample; each row holds input and reconstruction, each as three 16x16 slices side by side
    assert image.width >= 2 * 3 * 16


def test_vae_step_under_amp_stays_finite_and_updates_weights():
    from medgen.config import load_config
    from medgen.training.vae import VAETrainer

    cfg = load_config("vae_config.json", [*TINY, "amp=true", "cache=none", "autoencoder_train.adv_warmup_epochs=0"])
    trainer = VAETrainer(cfg, train_items=[], val_items=[])
    assert trainer.precision.enabled and trainer.precision.dtype == torch.bfloat16
    before = {k: v.clone() for k, v in trainer.autoencoder.state_dict().items()}
    losses = trainer.train_step(torch.rand(2, 1, 32, 32), adversarial=True)
    assert all(torch.isfinite(v) for v in losses.values())
    assert not _same_weights(before, trainer.autoencoder.state_dict())


def test_resume_with_another_architecture_names_the_keys_that_differ(demo2d, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [*TINY, f"data_base_dir={demo2d}", f"run_dir={run}", "autoencoder_train.max_epochs=1"]
    assert main(["vae_config.json", *[f"--set={o}" for o in sets]]) == 0
    changed = [*sets, "resume_ckpt=true", "autoencoder_def.latent_channels=3"]
    assert main(["vae_config.json", *[f"--set={o}" for o in changed]]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "autoencoder_def.latent_channels=2 (this run: 3)" in err and "channels=[8, 16]" not in err


def test_whole_image_validation_measures_what_reconstruct_writes(demo2d, tmp_path):
    """val_full_images: PSNR/SSIM on the whole validation images, tiled as `medgen reconstruct` runs them, and a
    grid of whole images."""
    import numpy as np

    from medgen.config import load_config
    from medgen.data.whole import model_input
    from medgen.io import read_image
    from medgen.io.discovery import discover_items
    from medgen.metrics import psnr

    run = tmp_path / "run"
    sets = [*TINY, f"data_base_dir={demo2d}", f"run_dir={run}", "val_full_images=true", "train_split=0.6"]
    assert main(["vae_config.json", *[f"--set={o}" for o in sets]]) == 0
    acc = _tb_tags(run)
    logged = acc.Scalars("val/full_psnr")[-1].value
    assert {"val/full_psnr", "val/full_ssim", "val/psnr"} <= set(acc.Tags()["scalars"])
    (grid,) = acc.Images("val/input_vs_reconstruction")[-1:]
    assert grid.height == 4 * (40 + 2)  # four whole 40x40 validation images (the patches are 32x32)

    cfg = load_config("vae_config.json", sets)
    _, val = discover_items(cfg)
    from medgen.cli import main as medgen

    assert medgen(["reconstruct", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--input", str(run / "config.json"),
                   "--output", str(tmp_path / "rec")]) == 0
    values = []
    for item in val:
        x, _, _ = model_input(cfg, item["image"])
        name = Path(item["image"]).relative_to(demo2d).as_posix().rsplit(".", 1)[0]
        y, _ = read_image(tmp_path / "rec" / f"{name}.nii.gz")
        values.append(psnr(torch.as_tensor(np.asarray(y))[None], x, reduction="none").item())
    assert logged == pytest.approx(float(np.mean(values)), abs=1e-3)
