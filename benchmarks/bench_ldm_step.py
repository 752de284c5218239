"""medgen's latent-diffusion training step against a loop written the way MONAI's 2d_ldm / 3d_ldm tutorials write
their diffusion stage, and medgen's fast paths (bf16 autocast, ``torch.compile``) against its fp32 eager step.

Same UNet (medgen's ``build_unet``: MONAI's DiffusionModelUNet), same DDPM scheduler, same batch of latents, same
initial weights, in one process, rounds alternating. The tutorial's step: ``zero_grad``, noise and timesteps,
``DiffusionInferer`` (add noise, UNet), MSE to the noise, ``backward``, Adam (not fused), ``loss.item()``.
medgen's: the same math plus its EMA of the UNet (``ema_decay``, on by default), the guarded fused Adam step and
no host read. Both take latents: the tutorials encode each batch with the autoencoder in every step
(``LatentDiffusionInferer``), medgen encodes each image once into a cache, so a real tutorial step also pays an
encoder forward that is not counted here. Before timing, the tutorial's first step is checked against medgen's
fp32 one, and each mode's weights after ``--diff-steps`` steps are compared with fp32's.

    python benchmarks/bench_ldm_step.py --json benchmarks/results/ldm_step_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer

from bench_train_step import (MODES, interleaved_times, max_diff, mode_figures, print_profile, profile_steps, run_info,
                              train_from_same_weights, write_result)
from medgen.config import load_config, to_dict
from medgen.io.checkpoint import save_checkpoint
from medgen.models.autoencoder import build_autoencoder
from medgen.training.distributed import DistInfo
from medgen.training.ldm import LDMTrainer

ROOT = Path(__file__).resolve().parents[1]


class TutorialLDMLoop:
    """The tutorials' diffusion training step (fp32; on a GPU they add fp16 autocast and a GradScaler)."""

    def __init__(self, unet, scheduler, lr: float, scale_factor: float):
        self.unet, self.scale_factor = unet, scale_factor
        self.optimizer = torch.optim.Adam(params=unet.parameters(), lr=lr)
        self.inferer = DiffusionInferer(scheduler)

    def step(self, z):
        self.optimizer.zero_grad(set_to_none=True)
        noise = torch.randn_like(z)
        timesteps = torch.randint(0, self.inferer.scheduler.num_train_timesteps, (z.shape[0],), device=z.device).long()
        noise_pred = self.inferer(inputs=z * self.scale_factor, diffusion_model=self.unet, noise=noise, timesteps=timesteps)
        loss = F.mse_loss(noise_pred.float(), noise.float())
        loss.backward()
        self.optimizer.step()
        return loss.item()


def autoencoder_checkpoint(path: Path, spatial_dims: int, latent_channels: int) -> Path:
    """A random autoencoder in the VAE trainer's checkpoint format: the LDM trainer reads its config (the step
    itself never runs it)."""
    cfg = load_config(ROOT / "vae_config.json", [f"spatial_dims={spatial_dims}", "autoencoder_def.channels=[8,16]",
                                                 "autoencoder_def.norm_num_groups=8", "autoencoder_def.attention_levels=[false,false]",
                                                 f"autoencoder_def.latent_channels={latent_channels}",
                                                 f"autoencoder_train.patch_size={[64] * spatial_dims}"])
    return save_checkpoint({"autoencoder": build_autoencoder(cfg.autoencoder_def).state_dict(), "config": to_dict(cfg),
                            "epoch": 1}, path)


def unet_weights(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.unet.parameters()]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--latent-size", type=int, default=32, help="latent crop side")
    p.add_argument("--latent-channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", default="[32,64,64]")
    p.add_argument("--modes", default="fp32,bf16", help=f"medgen modes to run, of {', '.join(MODES)} (fp32 always)")
    p.add_argument("--steps", type=int, default=5, help="steps per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--diff-steps", type=int, default=5)
    p.add_argument("--ema-decay", default="0.999",
                   help="medgen's EMA of the UNet (the shipped 0.999); 'null': none, the tutorials' math exactly")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--profile", action="store_true",
                   help="also profile the tutorial loop and medgen fp32: the host's time per kind of op and the largest "
                        "other ops (on a GPU at a small batch, the host's time is the step's rate)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    modes = ["fp32"] + [m for m in args.modes.split(",") if m and m != "fp32"]
    load_before = os.getloadavg()
    n = args.spatial_dims
    tmp = Path(tempfile.mkdtemp(prefix="bench_ldm_"))
    vae = autoencoder_checkpoint(tmp / "vae.pt", n, args.latent_channels)
    overrides = [f"spatial_dims={n}", f"autoencoder_checkpoint={vae}", f"run_dir={tmp / 'run'}", "diffusion_def.class_conditional=false", f"diffusion_def.channels={args.channels}",
                 "diffusion_def.attention_levels=[false,false,true]", "diffusion_def.num_res_blocks=1",
                 f"diffusion_def.num_head_channels={min(16, json.loads(args.channels)[-1])}",
                 f"diffusion_def.norm_num_groups={min(16, json.loads(args.channels)[0])}",
                 f"ldm_train.latent_patch_size={[args.latent_size] * n}", f"ldm_train.batch_size={args.batch}",
                 "ldm_train.grad_clip=null", f"ldm_train.ema_decay={args.ema_decay}"]  # the tutorials do not clip
    trainers = {}
    for mode in modes:
        cfg = load_config(ROOT / "ldm_config.json", [*overrides, *MODES[mode]])
        trainers[mode] = LDMTrainer(cfg, DistInfo(device=device))
    fp32 = trainers["fp32"]
    start = unet_weights(fp32)
    assert all(max_diff(unet_weights(tr), start) == 0.0 for tr in trainers.values())
    baseline = TutorialLDMLoop(copy.deepcopy(fp32.unet), fp32.noise_scheduler, cfg.ldm_train.lr, fp32.stats.scale_factor)
    latents = torch.randn(args.batch, args.latent_channels, *[args.latent_size] * n,
                          generator=torch.Generator().manual_seed(0)).to(device)

    after_one, after, first_step_s, memory = train_from_same_weights(trainers, lambda tr: tr.train_step(latents), unet_weights,
                                                             args.diff_steps, device)
    torch.manual_seed(1)
    baseline.step(latents)
    tutorial_diff = max_diff(after_one, [p.detach() for p in baseline.unet.parameters()])
    after["start"] = start

    steps = {"tutorial": baseline.step, **{m: tr.train_step for m, tr in trainers.items()}}
    step_s = interleaved_times(steps, latents, args.steps, args.rounds, device)
    base_s = step_s["tutorial"]
    result = {
        "benchmark": "ldm_train_step",
        **run_info(args.device, load_before),
        "spatial_dims": n,
        "latent_size": args.latent_size,
        "latent_channels": args.latent_channels,
        "batch_size": args.batch,
        "channels": json.loads(args.channels),
        "ema_decay": cfg.ldm_train.ema_decay,
        "baseline_latents_per_s": args.batch / base_s,
        "medgen_latents_per_s": args.batch / step_s["fp32"],
        "ratio": base_s / step_s["fp32"],
        "max_weight_diff_after_one_step": tutorial_diff,
        "modes": mode_figures("latents", args.batch, step_s, first_step_s, after, args.diff_steps, memory),
    }
    if args.profile:
        result["profile"] = profile_steps({k: steps[k] for k in ("tutorial", "fp32", "graphs") if k in steps}, latents, args.steps)
        print_profile(result["profile"])
    print(f"{'step':<16}{'latents/s':>10}{'x tutorial':>12}{'first step s':>14}{'rel. diff':>11}")
    print(f"{'tutorial-style':<16}{result['baseline_latents_per_s']:>10.2f}{1.0:>12.2f}")
    for mode, r in result["modes"].items():
        print(f"{'medgen ' + mode:<16}{r['latents_per_s']:>10.2f}{r['ratio_to_tutorial']:>12.2f}{r['first_step_s']:>14.1f}"
              f"{r['relative_weight_diff_to_fp32']:>11.2e}"
              + (f"  peak {r['peak_mb']:.0f} MB, held {r['held_mb']:.0f} MB" if "peak_mb" in r else ""))
    print(f"tutorial vs medgen fp32 UNet weights after one step differ by at most {tutorial_diff:.1e}")
    return write_result(result, args.json)


if __name__ == "__main__":
    main()
