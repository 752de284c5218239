"""WGAN-GP / GAN trainer: config, GP wiring, GAN loss kinds, FID/KID by path, DDP (gloo) with bitwise resume."""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import pytest
import torch

from conftest import stop_preempt_resume, torchrun, train_wgan as main
from medgen.training.base import resume_path
from medgen.config import ConfigError, WGANConfig
from medgen.config import load_config
from medgen.io.discovery import discover_items
from medgen.metrics import FeatureExtractor, fid, kid
from medgen.io.checkpoint import load_checkpoint
from medgen.training.wgan import WGANTrainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "wgan_config.json"
# 64x64 images (the smallest size), generator 32 -> 16 channels, critic 8..64 channels: fast on 2 CPU cores.
TINY = [
    "generator.g_channels=32", "generator.min_channels=8", "critic.d_channels=8", "wgan_train.batch_size=2",
    "wgan_train.max_epochs=2", "wgan_train.n_critic=3", "wgan_train.num_eval_samples=8", "num_val_images=4",
    "num_workers=0", "scan_workers=0", "data_source=both", "log_interval=1",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(demo, run, *extra) -> WGANConfig:
    return load_config(CONFIG, [*TINY, f"data_base_dir={demo}", f"run_dir={run}", "cache=none", *extra], cls=WGANConfig)


def _trainer(demo, run, *extra) -> WGANTrainer:
    cfg = _cfg(demo, run, *extra)
    train, val = discover_items(cfg)
    return WGANTrainer(cfg, train_items=train, val_items=val)


def _real_batch(trainer: WGANTrainer, n: int) -> torch.Tensor:
    return torch.stack([trainer.train_ds[i]["image"] for i in range(n)]) * 2 - 1


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ config
def test_config_file_holds_the_typed_defaults_and_seed_values():
    data = json.loads(CONFIG.read_text())
    assert load_config(CONFIG, cls=WGANConfig) == WGANConfig()  # one source of truth
    t = data["wgan_train"]
    assert (t["betas"], t["lr_generator"], t["lr_discriminator"], t["lambda_gp"]) == ([0.0, 0.9], 2e-4, 2e-4, 10.0)
    assert t["feature_matching_weight"] == 0.01 and data["generator"]["z_dim"] == 100
    for key in ("data_base_dir", "run_dir", "resume_ckpt", "checkpoint_dir", "augment", "amp"):
        assert key in data  # the shared RunConfig keys


@pytest.mark.parametrize(
    "override, message",
    [
        ("wgan_train.image_size=96", "wgan_train.image_size=96 must be a power of two between 64 and 256"),
        ("wgan_train.image_size=512", "wgan_train.image_size=512 must be a power of two"),
        ("wgan_train.n_critic=0", "wgan_train.n_critic=0 must be at least 1"),
        ("wgan_train.batch_size=1", "wgan_train.batch_size=1 must be at least 2"),
        ('wgan_train.gan_loss="hinged"', 'wgan_train.gan_loss="hinged" is not one of "bce", "hinge", "least_squares" (did you mean "hinge"?)'),
        ("wgan_train.lamda_gp=5", "unknown config key wgan_train.lamda_gp; did you mean wgan_train.lambda_gp?"),
        ("critic.self_attention_resolutions=[64]", "resolution 64 does not exist in the network for wgan_train.image_size=64; choose from [4, 8, 16, 32]"),
        ("wgan_train.ema_decay=1.5", "wgan_train.ema_decay=1.5 must be between 0 and 1"),
        ("wgan_train.betas=[0.5]", "wgan_train.betas=[0.5] must be two numbers in [0, 1)"),
        ("wgan_train.fid_feature_weights=/nonexistent/inception.pt", "/nonexistent/inception.pt does not exist; give a local feature network file"),
        ('generator.backbone={"hidden_dims":[8]}', "generator.backbone is only used with generator.type conv_decoder or progressive_decoder"),
        ("spatial_dims=3", "spatial_dims=3: the WGAN-GP and GAN trainers are 2D"),
    ],
)
def test_config_errors_are_one_line_and_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG, [override], cls=WGANConfig)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_reports_config_and_backbone_errors_in_one_line(demo2d, tmp_path, capsys):
    assert main([str(CONFIG), "--set", "wgan_train.n_critic=0"]) == 2
    assert capsys.readouterr().err.strip() == "medgen: config error: wgan_train.n_critic=0 must be at least 1"
    # decoder backbone keys are checked by the decoder when the trainer builds it
    sets = ['generator.type="conv_decoder"', 'generator.backbone={"hiden_dims":[8]}', f"run_dir={tmp_path}",
            f"data_base_dir={demo2d}"]
    assert main([str(CONFIG), *[f"--set={s}" for s in sets]]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("medgen: config error: unknown config key generator.backbone.hiden_dims; "
                   "did you mean generator.backbone.hidden_dims?")


# ------------------------------------------------------------------------------------------------ the steps
def test_optimisers_follow_the_config(demo2d, tmp_path):
    trainer = _trainer(demo2d, tmp_path, "wgan_train.lr_generator=3e-4", "wgan_train.lr_discriminator=1e-4",
                       "wgan_train.betas=[0.0,0.99]")
    for opt, lr in ((trainer.opt_g, 3e-4), (trainer.opt_d, 1e-4)):
        assert opt.param_groups[0]["betas"] == (0.0, 0.99) and opt.param_groups[0]["lr"] == pytest.approx(lr)
    assert {id(p) for p in trainer.opt_d.param_groups[0]["params"]} == {id(p) for p in trainer.critic.parameters()}
    default = _trainer(demo2d, tmp_path)
    assert default.opt_g.param_groups[0]["betas"] == (0.0, 0.9) == default.opt_d.param_groups[0]["betas"]


def test_gradient_penalty_drives_the_critic_gradient_norm_towards_one(demo2d, tmp_path):
    """The trainer's own critic steps on a fixed real batch: with lambda_gp=10 the mean gradient norm on the
    interpolates settles near 1; with lambda_gp=0 (same start, same data) it stays far above."""
    last_norms = {}
    for lam in (10.0, 0.0):
        trainer = _trainer(demo2d, tmp_path, f"wgan_train.lambda_gp={lam}", "wgan_train.batch_size=4")
        real = _real_batch(trainer, 4)
        norms = [trainer.critic_step(real)["grad_norm"].item() for _ in range(40)]
        last_norms[lam] = statistics.mean(norms[-10:])
    assert abs(last_norms[10.0] - 1.0) < 0.3, last_norms
    assert last_norms[0.0] > 2.0, last_norms


@pytest.mark.parametrize(
    "loss, fm_weight, extra",
    [
        ("bce", 0.01, ["wgan_train.lr_scheduler=cosine_warm_restarts", "wgan_train.T_0=2"]),
        ("hinge", 0.0, ["wgan_train.grad_clip=1.0"]),
        ("least_squares", 0.01, ["wgan_train.ema_decay=0.9"]),
        # mixed precision (bf16 autocast on this CPU), feature matching off and on
        ("bce", 0.0, ["amp=true"]),
        ("hinge", 0.01, ["amp=true", "wgan_train.grad_clip=1.0"]),
        ("least_squares", 0.0, ["amp=true"]),
    ],
)
def test_gan_method_trains_an_epoch_for_each_loss_kind(demo2d, tmp_path, loss, fm_weight, extra):
    trainer = _trainer(demo2d, tmp_path, "wgan_train.method=gan", f"wgan_train.gan_loss={loss}",
                       f"wgan_train.feature_matching_weight={fm_weight}", "wgan_train.n_critic=1", *extra)
    g0 = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    d0 = {k: v.clone() for k, v in trainer.critic.state_dict().items()}
    means = trainer.train_epoch()
    assert set(means) == {"discriminator", "real_logit", "fake_logit", "generator", "generator_adv", "feature_matching"}
    assert all(math.isfinite(v) for v in means.values()), means
    assert (means["feature_matching"] > 0) == (fm_weight > 0)
    assert means["generator"] == pytest.approx(means["generator_adv"] + fm_weight * means["feature_matching"], rel=1e-5)
    assert not _same(g0, trainer.generator.state_dict()) and not _same(d0, trainer.critic.state_dict())
    if "wgan_train.T_0=2" in extra:  # one epoch into a 2-epoch cosine cycle: half the base LR
        assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(1e-4)
    if "wgan_train.ema_decay=0.9" in extra:  # samples come from the EMA copy, which lags the trained generator
        ema = trainer.sampling_network
        assert ema is not trainer.generator and not _same(ema.state_dict(), trainer.generator.state_dict())


def test_fid_and_kid_use_the_feature_network_given_by_path(demo2d, tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3, stride=2))
    path = tmp_path / "features.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    trainer = _trainer(demo2d, tmp_path, f"wgan_train.fid_feature_weights={path}", "wgan_train.fid_in_channels=3",
                       "wgan_train.fid_input_size=32", "wgan_train.num_eval_samples=6", "train_split=0.4")
    metrics = trainer.validate()
    assert set(metrics) == {"fid", "kid", "kid_std"}
    # the same numbers computed directly from the held-out images and the same evaluation samples
    extractor = FeatureExtractor(path, in_channels=3, input_size=32)
    real = trainer._held_out_real()
    fake = trainer.sample(torch.randn(6, trainer.generator.z_dim, generator=torch.Generator().manual_seed(trainer.cfg.seed + 1)))
    real_f, fake_f = extractor(real), extractor(fake)
    assert metrics["fid"] == pytest.approx(float(fid(real_f, fake_f)), rel=1e-5)
    kid_mean, _ = kid(real_f, fake_f, num_subsets=50, generator=torch.Generator().manual_seed(0))
    assert metrics["kid"] == pytest.approx(float(kid_mean), rel=1e-5, abs=1e-9)


# ------------------------------------------------------------------------------------------------ whole runs
def _tb(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_single_process_run_checkpoints_logs_and_refuses_to_overwrite(demo2d, tmp_path, caplog, capsys):
    run = tmp_path / "run"
    args = [str(CONFIG), *[f"--set={o}" for o in (*TINY, f"data_base_dir={demo2d}", f"run_dir={run}",
                                                  "wgan_train.max_epochs=1", "wgan_train.ema_decay=0.9")]]
    with caplog.at_level(logging.INFO, logger="medgen.train"):
        assert main(args) == 0
    assert "FID/KID off" in caplog.text
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")  # weights_only=True
    assert {"generator", "critic", "ema", "opt_g", "opt_d", "sched_g", "sched_d", "scaler_g", "scaler_d", "epoch",
            "global_step", "rng", "config"} <= ckpt.keys()
    assert ckpt["epoch"] == 1 and ckpt["ema"] is not None
    acc = _tb(run)
    scalars = set(acc.Tags()["scalars"])
    for tag in ("loss/critic", "loss/gp", "wgan/wasserstein", "wgan/grad_norm", "lr/generator", "lr/discriminator",
                "val/ssim_diversity", "val/hist_wasserstein", "val/hist_intersection"):
        assert tag in scalars, tag
    assert "val/samples" in acc.Tags()["images"]
    capsys.readouterr()
    assert main(args) == 2  # the same run_dir again without resume_ckpt
    assert "set resume_ckpt=true" in capsys.readouterr().err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["global_step"] == ckpt["global_step"]


# 2 critic steps per rank and epoch: one generator step (and EMA update) per epoch, so the checkpoint after
# epoch 1 holds a trained generator and an EMA that has averaged (a restored-from-scratch EMA would differ).
DDP_SETS = ["wgan_train.ema_decay=0.9", "wgan_train.n_critic=2"]


def _ddp_run(demo, run, extra=(), env=None, torchrun_args=(), check=True):
    sets = [f"--set={o}" for o in (*TINY, *DDP_SETS, f"data_base_dir={demo}", f"run_dir={run}", *extra)]
    return torchrun(["--standalone", "--nproc_per_node=2", *torchrun_args, "tests/wgan_ddp_worker.py", str(CONFIG), *sets],
                    env=env, check=check)


@pytest.fixture(scope="module")
def ddp_two_epochs(demo2d, tmp_path_factory):
    run = tmp_path_factory.mktemp("wgan_ddp") / "full"
    _ddp_run(demo2d, run)
    return run


def test_two_processes_scale_lr_log_grid_and_gp_and_end_identical(ddp_two_epochs):
    r0 = torch.load(ddp_two_epochs / "weights_rank0.pt", weights_only=True)
    r1 = torch.load(ddp_two_epochs / "weights_rank1.pt", weights_only=True)
    assert r0["lr_g"] == pytest.approx(2 * 2e-4) and r0["lr_d"] == pytest.approx(2 * 2e-4)
    assert _same(r0["generator"], r1["generator"]) and _same(r0["critic"], r1["critic"])
    acc = _tb(ddp_two_epochs)
    assert len(acc.Images("val/samples")) == 2  # one fixed-noise grid per validation
    gp = [e.value for e in acc.Scalars("loss/gp")]
    assert gp and all(math.isfinite(v) and v >= 0 for v in gp)
    assert "wgan/grad_norm" in acc.Tags()["scalars"] and "loss/generator" in acc.Tags()["scalars"]
    ckpt = load_checkpoint(ddp_two_epochs / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2 and len(ckpt["rng"]) == 2
    # the process group is gone when the command returns: no gloo thread lives on into interpreter exit
    for rank in (0, 1):
        threads = (ddp_two_epochs / f"threads_rank{rank}.txt").read_text().split()
        assert threads and not any("gloo" in t for t in threads), threads


def test_stop_after_epoch_one_then_sigterm_on_one_rank_mid_epoch_stops_both_and_resumes_bitwise_equal(
        demo2d, ddp_two_epochs, tmp_path):
    resumed, _ = stop_preempt_resume(_ddp_run, demo2d, tmp_path / "preempted", "wgan_train.max_epochs")
    full = load_checkpoint(ddp_two_epochs / "checkpoints" / "last.pt")
    assert resumed["epoch"] == 2 and resumed["global_step"] == full["global_step"]
    for key in ("generator", "critic", "ema"):
        assert _same(full[key], resumed[key]), key


def test_resume_path_after_torchrun_restart(demo2d, ddp_two_epochs, tmp_path, monkeypatch):
    """A restarted torchrun worker (TORCHELASTIC_RESTART_COUNT > 0) resumes from last.pt by itself; a fresh
    launch on the same run_dir refuses; resume_ckpt=true takes checkpoint_dir when given."""
    last = ddp_two_epochs / "checkpoints" / "last.pt"
    trainer = _trainer(demo2d, ddp_two_epochs)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert resume_path(trainer.cfg) == last
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    with pytest.raises(ConfigError, match="set resume_ckpt=true to continue it"):
        resume_path(trainer.cfg)
    other = _trainer(demo2d, tmp_path, *DDP_SETS, "resume_ckpt=true", f"checkpoint_dir={last}")
    assert resume_path(other.cfg) == last
    other.load(last)  # a 2-process checkpoint in 1 process: weights restored, random streams restart
    assert other.epoch == 2 and _same(other.critic.state_dict(), load_checkpoint(last)["critic"])


def test_wgan_gp_steps_stay_finite_under_amp(demo2d, tmp_path):
    trainer = _trainer(demo2d, tmp_path, "amp=true", "wgan_train.batch_size=4")
    assert trainer.precision.enabled and trainer.precision.dtype == torch.bfloat16
    real = _real_batch(trainer, 4)
    for _ in range(3):
        critic = trainer.critic_step(real)
        gen = trainer.generator_step(real)
    assert all(torch.isfinite(v).all() for v in (*critic.values(), *gen.values()))
