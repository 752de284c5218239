"""Fault injection: what clusters and users do to a run, and that nothing but the interrupted step is lost.

Real processes: a training process receives SIGTERM in the middle of a step (as a Slurm or Kubernetes
preemption would deliver it), stops at the step boundary with ``last.pt`` holding the position inside the
epoch, and a resumed run ends bitwise equal to an uninterrupted one. Two-process variants are in
test_train_vae.py / test_train_wgan.py, beside the uninterrupted runs they compare with.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, tb_scalars, train_vae
from medgen.io.checkpoint import load_checkpoint

WGAN_TINY = ["generator.g_channels=32", "generator.min_channels=8", "critic.d_channels=8", "wgan_train.batch_size=2",
             "wgan_train.max_epochs=2", "wgan_train.n_critic=2", "wgan_train.num_eval_samples=4", "num_val_images=4",
             "num_workers=0", "scan_workers=0", "data_source=both", "log_interval=1", "wgan_train.ema_decay=0.9"]
RUNS = {  # worker script, config, overrides
    "vae": ("tests/ddp_worker.py", "vae_config.json", TINY),
    "wgan": ("tests/wgan_ddp_worker.py", "wgan_config.json", WGAN_TINY),
    "plain": ("tests/plain_autoencoder.py", "vae_config.json", TINY),  # a method written on the skeleton alone
}


def _run(kind: str, demo, run, *extra, env=None) -> subprocess.CompletedProcess:
    script, config, sets = RUNS[kind]
    args = [f"--set={o}" for o in (*sets, f"data_base_dir={demo}", f"run_dir={run}", *extra)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.run([sys.executable, script, config, *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=300)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind, nets", [("vae", ("autoencoder", "discriminator")), ("wgan", ("generator", "critic", "ema")),
                                        ("plain", ("autoencoder",))])
def test_sigterm_mid_epoch_then_resume_is_bitwise_equal(kind, nets, demo2d, tmp_path):
    full = _run(kind, demo2d, tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    run = tmp_path / "preempted"
    # 8 training images, batch 2: 4 steps an epoch; the signal arrives during step 1 of epoch 1 (0-based)
    cut = _run(kind, demo2d, run, env={"MEDGEN_TEST_SIGNAL": "SIGTERM@1:1:0"})
    assert cut.returncode == 143, cut.stderr[-3000:]
    last = cut.stderr.strip().splitlines()[-1]
    assert last.startswith("medgen: interrupted (SIGTERM) at epoch 2 step 2; ") and "resume_ckpt=true" in last
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 2)  # nothing lost but the step in flight: it finished
    resumed = _run(kind, demo2d, run, "resume_ckpt=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    assert (b["epoch"], b["step_in_epoch"], b["global_step"]) == (a["epoch"], 0, a["global_step"])
    for net in nets:
        assert _same(a[net], b[net]), net


@pytest.fixture()
def one_epoch(demo2d, tmp_path):
    """A finished one-epoch VAE run and its overrides."""
    sets = [*TINY, f"data_base_dir={demo2d}", f"run_dir={tmp_path / 'run'}", "autoencoder_train.max_epochs=1"]
    assert train_vae(["vae_config.json", *[f"--set={s}" for s in sets]]) == 0
    return tmp_path / "run", sets


def _events(run) -> list:
    return sorted((run / "tensorboard").glob("events.*"))


def test_resuming_a_finished_run_says_so_and_writes_nothing(one_epoch, caplog):
    run, sets = one_epoch
    events, before = _events(run), (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="medgen.train"):
        assert train_vae(["vae_config.json", *[f"--set={s}" for s in (*sets, "resume_ckpt=true")]]) == 0
    assert "finished at epoch 1" in caplog.text and "raise max_epochs" in caplog.text
    assert _events(run) == events and (run / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_resume_with_changed_settings_trains_with_them_and_lists_them(one_epoch, caplog):
    run, sets = one_epoch
    changed = [*sets, "resume_ckpt=true", "autoencoder_train.max_epochs=2", "autoencoder_train.lr=3e-05",
               "autoencoder_train.kl_weight=2e-06"]
    with caplog.at_level(logging.INFO, logger="medgen.train"):
        assert train_vae(["vae_config.json", *[f"--set={s}" for s in changed]]) == 0
    line = next(r.getMessage() for r in caplog.records if "changed settings" in r.getMessage())
    for text in ("autoencoder_train.lr=0.0001 (this run: 3e-05)", "autoencoder_train.kl_weight=1e-06 (this run: 2e-06)",
                 "autoencoder_train.max_epochs=1 (this run: 2)"):
        assert text in line, line
    assert "resume_ckpt" not in line
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["opt_g"]["param_groups"][0]["lr"] == pytest.approx(3e-5)  # the optimiser trained at the new rate
    lrs = [v for _, v in tb_scalars(run, "lr/generator")]  # two event files: the first run's and the resumed run's
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(3e-5)  # TensorBoard agrees


def test_a_missing_checkpoint_is_reported_before_the_data_scan(demo2d, tmp_path, capsys, monkeypatch):
    def no_scan(*args, **kwargs):
        raise AssertionError("the data were scanned")

    monkeypatch.setattr("medgen.training.data_check.scan_files", no_scan)
    sets = [*TINY, f"data_base_dir={demo2d}", f"run_dir={tmp_path / 'run'}", "resume_ckpt=true"]
    assert train_vae(["vae_config.json", *[f"--set={s}" for s in sets]]) == 2
    err = capsys.readouterr().err.strip()
    assert "last.pt does not exist" in err and "set resume_from to the checkpoint file" in err


def test_a_truncated_last_pt_is_named_and_the_good_one_offered(one_epoch, capsys):
    run, sets = one_epoch
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    assert train_vae(["vae_config.json", *[f"--set={s}" for s in (*sets, "resume_ckpt=true", "autoencoder_train.max_epochs=2")]]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(last) in err and "cannot be loaded" in err and f"resume_from={run / 'checkpoints' / 'best.pt'}" in err


def test_disk_full_while_saving_keeps_the_previous_checkpoint(one_epoch, monkeypatch):
    from medgen.config import load_config
    from medgen.training.vae import VAETrainer

    run, sets = one_epoch
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    trainer = VAETrainer.from_config(load_config("vae_config.json", [*sets, "resume_ckpt=true"]))

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(last))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        trainer.save("last.pt")
    assert last.read_bytes() == before  # the previous last.pt, whole
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]  # no temporary left behind


def _nan_kl_from(step: int, monkeypatch, until: int | None = None):
    """A test-only fault: the KL term is NaN from training step ``step`` on (1-based global steps)."""
    import medgen.training.vae as vae

    original, calls = vae.kl_loss, {"n": 0}

    def kl(z_mu, z_sigma):
        calls["n"] += 1
        value = original(z_mu, z_sigma)
        return value * float("nan") if calls["n"] >= step and (until is None or calls["n"] <= until) else value

    monkeypatch.setattr(vae, "kl_loss", kl)


def _all_finite(ckpt) -> bool:
    return all(torch.isfinite(t).all() for net in ("autoencoder", "discriminator") for t in ckpt[net].values()
               if t.is_floating_point())


def test_a_nan_loss_skips_the_step_and_too_many_stop_the_run(demo2d, tmp_path, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _nan_kl_from(3, monkeypatch)  # 4 steps an epoch: steps 3, 4 of epoch 1, then 5, 6 of epoch 2 are NaN
    run = tmp_path / "run"
    sets = [*TINY, f"data_base_dir={demo2d}", f"run_dir={run}", "max_nonfinite_steps=3"]
    assert train_vae(["vae_config.json", *[f"--set={s}" for s in sets]]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("medgen: training diverged: 4 steps in a row up to step 6 (epoch 2)") and "kl=nan" in err
    for name in ("last.pt", "best.pt"):  # written after epoch 1, from the weights of the last finite step
        assert _all_finite(load_checkpoint(run / "checkpoints" / name)), name
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/nonfinite_steps")] == [1, 2, 3, 4]


def test_one_nan_step_is_skipped_and_training_goes_on(demo2d, tmp_path, monkeypatch):
    _nan_kl_from(2, monkeypatch, until=2)
    run = tmp_path / "run"
    sets = [*TINY, f"data_base_dir={demo2d}", f"run_dir={run}"]
    assert train_vae(["vae_config.json", *[f"--set={s}" for s in sets]]) == 0
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 2 and _all_finite(ckpt)


def test_an_epoch_without_a_generator_step_is_warned_about(demo2d, tmp_path, caplog):
    from conftest import train_wgan

    sets = [*WGAN_TINY, "wgan_train.max_epochs=1", "wgan_train.n_critic=10", f"data_base_dir={demo2d}",
            f"run_dir={tmp_path / 'run'}"]
    with caplog.at_level(logging.WARNING, logger="medgen.train"):
        assert train_wgan(["wgan_config.json", *[f"--set={s}" for s in sets]]) == 0
    assert "epoch 1 made no generator step" in caplog.text and "lower n_critic" in caplog.text


def test_a_nan_step_is_counted_and_stops_the_run_at_the_next_check(demo2d, tmp_path, monkeypatch, capsys):
    """Skipped steps are read every log_interval steps and at the end of an epoch: a run of skipped steps that is
    too long stops training at the first such check at or after its last step, here one step later."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _nan_kl_from(2, monkeypatch, until=2)
    run = tmp_path / "run"
    sets = [*TINY, f"data_base_dir={demo2d}", f"run_dir={run}", "max_nonfinite_steps=0", "log_interval=3"]
    assert train_vae(["vae_config.json", *[f"--set={s}" for s in sets]]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("medgen: training diverged: 1 steps in a row up to step 2 (epoch 1) had a non-finite loss "
                          "or gradient (kl=nan); stopped at step 3, the next check;"), err
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/nonfinite_steps")] == [(3, 1)]
