"""max_time: a run ends at its wall-clock budget with its checkpoints and a final validation, a resumed run
spends only what is left, and all ranks stop at the same step. The warmup_cosine schedule it decays over."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY, tb_scalars, torchrun, train_vae
from medgen.config import ConfigError, load_config
from medgen.io.checkpoint import load_checkpoint
from medgen.training import base, vae
from medgen.training.base import warmup_cosine


@pytest.fixture()
def step_clock(monkeypatch):
    """The trainer's clock advances one second per training step, and not otherwise: a budget of N seconds is
    N steps, whatever the machine's speed."""
    now = [1000.0]
    original = vae.VAETrainer.train_step

    def train_step(self, images, *args):
        now[0] += 1.0
        return original(self, images, *args)

    monkeypatch.setattr(vae.VAETrainer, "train_step", train_step)
    monkeypatch.setattr(base, "monotonic", lambda: now[0])


def _train(demo, run, *extra):
    sets = [*TINY, f"data_base_dir={demo}", f"run_dir={run}", "autoencoder_train.max_epochs=100", *extra]
    return train_vae(["vae_config.json", *[f"--set={o}" for o in sets]])


def test_max_time_stops_mid_epoch_with_checkpoints_and_a_final_validation(demo2d, tmp_path, step_clock, caplog):
    run = tmp_path / "run"
    caplog.set_level("INFO", logger="medgen.train")
    assert _train(demo2d, run, "max_time=00:00:07") == 0
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    # 8 training images, batch 2: 4 steps an epoch; the 7th step ends the budget, inside the second epoch
    assert (last["global_step"], last["epoch"], last["step_in_epoch"]) == (7, 1, 3)
    assert last["train_time"] == pytest.approx(7.0)
    assert (run / "checkpoints" / "best.pt").is_file()
    # the final validation ran at the step the run stopped at (the previous one ended the first epoch)
    assert [s for s, _ in tb_scalars(run, "val/psnr")] == [4, 7]
    assert "max_time=00:00:07 reached at epoch 2 step 3" in caplog.text

    # resumed with a longer budget, it trains only what is left of it: 12 - 7 = 5 steps
    assert _train(demo2d, run, "max_time=00:00:12", "resume_ckpt=true") == 0
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed["global_step"] == 12 and resumed["train_time"] == pytest.approx(12.0)
    assert [s for s, _ in tb_scalars(run, "val/psnr")][-1] == 12

    # the budget spent, a resume says so and trains nothing
    caplog.clear()
    assert _train(demo2d, run, "max_time=00:00:12", "resume_ckpt=true") == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["global_step"] == 12
    assert "nothing to train: raise max_time" in caplog.text


def test_warmup_cosine_rises_then_decays_over_max_time(demo2d, tmp_path, step_clock):
    run = tmp_path / "run"
    assert _train(demo2d, run, "max_time=00:00:10", "autoencoder_train.lr_scheduler=warmup_cosine",
                  "autoencoder_train.lr_warmup_steps=3") == 0
    lrs = [v for _, v in tb_scalars(run, "lr/generator")]  # logged after each step (log_interval=1)
    assert len(lrs) == 10
    assert lrs[0] == pytest.approx(1e-4 / 3) and lrs[2] == pytest.approx(1e-4 * warmup_cosine(2, 3, 2 / 10))
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))  # decays after the warm-up, towards 0 at the budget


def test_warmup_cosine_factor():
    assert warmup_cosine(0, 4, 0.0) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 0, 0.5) == pytest.approx(0.5)
    assert warmup_cosine(10, 4, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(10, 4, 2.0) == pytest.approx(0.0, abs=1e-12)  # past the end it stays at 0


@pytest.mark.parametrize("text, seconds", [("08:00:00", 28800.0), ("00:00:05", 5.0), ("01:00:00:30", 86430.0)])
def test_max_time_accepts_lightning_durations(text, seconds):
    assert load_config("vae_config.json", [f"max_time={text}"]).max_time_seconds == seconds


@pytest.mark.parametrize("text", ["5:00", "00:05", "00:00:00", "1h", "00:-1:00"])
def test_max_time_rejects_other_forms_naming_the_key(text):
    with pytest.raises(ConfigError, match="max_time=.*HH:MM:SS"):
        load_config("vae_config.json", [f"max_time={text}"])


def test_two_ranks_stop_at_the_same_step_at_max_time(demo2d, tmp_path):
    """Rank 0's clock decides; a rank that went on alone would hang in DDP's all-reduce instead of ending."""
    run = tmp_path / "ddp"
    sets = [*TINY, f"data_base_dir={demo2d}", f"run_dir={run}", "autoencoder_train.max_epochs=100000", "max_time=00:00:03"]
    torchrun(["--standalone", "--nproc_per_node=2", "tests/ddp_worker.py", "vae_config.json", *[f"--set={o}" for o in sets]])
    r0 = torch.load(run / "weights_rank0.pt", weights_only=True)
    r1 = torch.load(run / "weights_rank1.pt", weights_only=True)
    assert all(torch.equal(r0["autoencoder"][k], r1["autoencoder"][k]) for k in r0["autoencoder"])
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] < 100000 and last["train_time"] >= 3.0 and math.isfinite(last["best_psnr"])
