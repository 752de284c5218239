"""medgen's VAE-GAN training step against a loop written the way MONAI's AutoencoderKL tutorial writes it, and
medgen's fast paths (bf16 autocast, ``torch.compile``) against its fp32 eager step.

All contenders run in one process on the same model (same initial weights), the same batch and the same losses
(reconstruction + KL + patch-adversarial; the perceptual term is off because its weights are not shipped).
Rounds alternate between them so that machine noise hits all alike. Before timing, every medgen mode trains
``--diff-steps`` steps from the same weights on the same batch and noise: the weights' L2 distance to the fp32
eager step's, over how far fp32 training moved them, says what a mode changes, and the
tutorial's first step is compared with medgen's fp32 one to show that the math is the same. The compiled modes'
first steps (compilation) are timed apart from their steady rate.

    python benchmarks/bench_train_step.py --json benchmarks/results/train_step_cpu.json
    python benchmarks/bench_train_step.py --spatial-dims 3 --size 32 --batch 2 --channels [16,32,32] \
        --json benchmarks/results/train_step_3d_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from monai.losses import PatchAdversarialLoss

from medgen.config import load_config
from medgen.losses.vae import kl_loss
from medgen.training.distributed import DistInfo
from medgen.training.vae import VAETrainer

ROOT = Path(__file__).resolve().parents[1]


class TutorialLoop:
    """The MONAI tutorial's step: discriminator not frozen in the generator step, real and fake through the
    discriminator separately, MONAI's ``PatchAdversarialLoss`` (its targets copied from the host each call),
    losses read back with .item() every step."""

    def __init__(self, autoencoder, discriminator, lr, betas, kl_weight, adv_weight):
        self.ae, self.disc = autoencoder, discriminator
        self.opt_g = torch.optim.Adam(self.ae.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=betas)
        self.l1 = torch.nn.L1Loss()
        self.adv = PatchAdversarialLoss(criterion="least_squares")
        self.kl_weight, self.adv_weight = kl_weight, adv_weight

    def step(self, images):
        self.opt_g.zero_grad(set_to_none=True)
        reconstruction, z_mu, z_sigma = self.ae(images)
        recons_loss = self.l1(reconstruction.float(), images.float())
        loss_g = recons_loss + self.kl_weight * kl_loss(z_mu, z_sigma)
        logits_fake = self.disc(reconstruction.contiguous().float())[-1]
        generator_loss = self.adv(logits_fake, target_is_real=True, for_discriminator=False)
        loss_g = loss_g + self.adv_weight * generator_loss
        loss_g.backward()
        self.opt_g.step()

        self.opt_d.zero_grad(set_to_none=True)
        logits_fake = self.disc(reconstruction.contiguous().detach())[-1]
        loss_d_fake = self.adv(logits_fake, target_is_real=False, for_discriminator=True)
        logits_real = self.disc(images.contiguous().detach())[-1]
        loss_d_real = self.adv(logits_real, target_is_real=True, for_discriminator=True)
        discriminator_loss = (loss_d_fake + loss_d_real) * 0.5
        (self.adv_weight * discriminator_loss).backward()
        self.opt_d.step()
        return recons_loss.item(), generator_loss.item(), discriminator_loss.item()


MODES = {  # name: config overrides of medgen's step
    "fp32": [],
    "bf16": ["amp=true"],
    "compile": ["compile=true"],
    "compile_bf16": ["compile=true", "amp=true"],
    "graphs": ["cuda_graphs=true"],  # CUDA only (elsewhere the step runs eagerly, as fp32 / bf16)
    "graphs_bf16": ["cuda_graphs=true", "amp=true"],
}


def make_trainer(overrides, device=torch.device("cpu")):
    cfg = load_config(ROOT / "vae_config.json", [
        "autoencoder_train.perceptual_weight=0", "cache=none", "num_workers=0", "autoencoder_train.adv_warmup_epochs=0",
        *overrides,
    ])
    return cfg, VAETrainer(cfg, DistInfo(device=device), train_items=[], val_items=[])


def weights(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for m in (trainer.autoencoder, trainer.discriminator) for p in m.parameters()]


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def l2_diff(a, b) -> float:
    return sum((x - y).double().square().sum().item() for x, y in zip(a, b)) ** 0.5


def interleaved_times(steps: dict, batch, per_round: int, rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds per step of each of ``steps`` (name: function of the batch), in alternating rounds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn):
        sync()
        start = time.perf_counter()
        for _ in range(per_round):
            fn(batch)
        sync()
        return (time.perf_counter() - start) / per_round

    for fn in steps.values():  # warm-up
        timed(fn)
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            times[name].append(timed(fn))
    return {name: statistics.median(v) for name, v in times.items()}


def mode_figures(unit: str, batch: int, step_s: dict, first_step_s: dict, after: dict, diff_steps: int,
                 memory: dict | None = None) -> dict:
    """Per medgen mode: rate, ratios to the tutorial loop and to fp32, first step (compilation) and weights
    after ``diff_steps`` steps against fp32's (largest difference; L2 distance over fp32's L2 move)."""
    moved = l2_diff(after["fp32"], after["start"])
    return {mode: {
        f"{unit}_per_s": batch / step_s[mode],
        "ratio_to_tutorial": step_s["tutorial"] / step_s[mode],
        "ratio_to_fp32": step_s["fp32"] / step_s[mode],
        "first_step_s": first_step_s[mode],
        "compile_s": first_step_s[mode] - first_step_s["fp32"] if "compile" in mode else 0.0,
        f"max_weight_diff_to_fp32_after_{diff_steps}_steps": max_diff(after[mode], after["fp32"]),
        "relative_weight_diff_to_fp32": l2_diff(after[mode], after["fp32"]) / moved if moved else 0.0,
        **(memory or {}).get(mode, {}),
    } for mode in first_step_s}


def run_info(device: str, load_before: tuple[float, ...]) -> dict:
    """Where a benchmark ran: device, machine, threads, torch, the load average before and now."""
    return {"device": device, "machine": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]}


def write_result(result: dict, path: Path | None) -> dict:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def train_from_same_weights(trainers: dict, step, weights_of, n_steps: int, device: torch.device):
    """Run ``step(trainer)`` ``n_steps`` times for each trainer (all from the same weights), each from the same
    seed. Returns fp32's weights after its first step, every trainer's after the last, the seconds of each
    trainer's first step (the compiled modes compile there, graphs capture) and, on a GPU, each trainer's memory:
    the peak its steps allocated above what was allocated before them (``peak_mb``: optimiser state, activations,
    a capture) and what it still holds after them (``held_mb``: a graph keeps its own pool)."""
    first_step_s, after, memory = {}, {}, {}
    cuda = device.type == "cuda"
    for mode, trainer in trainers.items():
        torch.manual_seed(1)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
            torch.cuda.reset_peak_memory_stats()
        for i in range(n_steps):
            t0 = time.perf_counter()
            step(trainer)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i == 0:
                first_step_s[mode] = time.perf_counter() - t0
                if mode == "fp32":
                    after_one = weights_of(trainer)
        after[mode] = weights_of(trainer)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            memory[mode] = {"peak_mb": round((torch.cuda.max_memory_allocated() - allocated) / 2**20, 1),
                            "held_mb": round((torch.cuda.memory_reserved() - reserved) / 2**20, 1)}
    return after_one, after, first_step_s, memory


def op_category(name: str) -> str:
    """The kind of work an aten op does: convolution (forward and backward), normalisation, or everything else
    (elementwise losses and activations, the optimiser, copies, the framework's own overhead)."""
    name = name.lower()
    if "conv" in name:
        return "convolution"
    if "norm" in name:
        return "normalisation"
    return "other"


def profile_steps(steps: dict, batch, n_steps: int) -> dict:
    """Per step function: milliseconds per step (wall, with the device's queue drained) and how the host
    thread's time splits by :func:`op_category` (self time of every op, from ``torch.profiler``), after one
    warm-up step. On a GPU the host's time is what decides the rate while the GPU waits for it."""
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if batch.is_cuda else (lambda: None)
    out = {}
    for name, fn in steps.items():
        fn(batch)
        sync()
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n_steps):
                fn(batch)
            sync()
        wall_ms = (time.perf_counter() - start) * 1e3 / n_steps
        split = {"convolution": 0.0, "normalisation": 0.0, "other": 0.0}
        other = {}
        for event in prof.key_averages():
            ms = event.self_cpu_time_total / 1e3 / n_steps
            split[op_category(event.key)] += ms
            if op_category(event.key) == "other":
                other[event.key] = ms
        top = dict(sorted(other.items(), key=lambda kv: -kv[1])[:8])
        out[name] = {"step_ms_profiled": wall_ms, **{f"{k}_ms": v for k, v in split.items()},
                     "convolution_share": split["convolution"] / sum(split.values()), "largest_other_ops_ms": top}
    return out


def print_profile(prof: dict) -> None:
    for name, r in prof.items():
        print(f"profile {name:<9} {r['step_ms_profiled']:8.1f} ms/step: convolution {r['convolution_ms']:.1f} ms "
              f"({100 * r['convolution_share']:.0f}%), normalisation {r['normalisation_ms']:.1f}, other {r['other_ms']:.1f}")
        print("  largest other ops (ms/step): " + ", ".join(f"{k} {v:.1f}" for k, v in r["largest_other_ops_ms"].items()))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    p.add_argument("--size", type=int, default=64, help="image side")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--channels", default="[32,64,64]")
    p.add_argument("--modes", help=f"medgen modes to run, of {', '.join(MODES)} (fp32 always; default: all, the graphs "
                                   "modes on a GPU only)")
    p.add_argument("--steps", type=int, default=5, help="steps per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--diff-steps", type=int, default=5, help="steps before comparing each mode's weights with fp32's")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--profile", action="store_true",
                   help="also profile the tutorial loop and medgen fp32 by kind of op (convolution, normalisation, other)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.modes = args.modes or ",".join(m for m in MODES if "graphs" not in m or args.device.startswith("cuda"))
    modes = ["fp32"] + [m for m in args.modes.split(",") if m and m != "fp32"]
    load_before = os.getloadavg()

    n = args.spatial_dims
    overrides = [f"spatial_dims={n}", f"autoencoder_def.spatial_dims={n}",
                 f"autoencoder_def.channels={args.channels}", f"autoencoder_def.norm_num_groups={min(16, json.loads(args.channels)[0])}",
                 "autoencoder_def.num_res_blocks=1", "autoencoder_def.attention_levels=[false,false,true]",
                 f"autoencoder_train.patch_size={[args.size] * n}", f"autoencoder_train.batch_size={args.batch}"]
    trainers = {}
    for mode in modes:
        cfg, trainers[mode] = make_trainer([*overrides, *MODES[mode]], device)
    fp32 = trainers["fp32"]
    t = cfg.autoencoder_train
    start = weights(fp32)
    assert all(max_diff(weights(tr), start) == 0.0 for tr in trainers.values()), "modes start from different weights"
    baseline = TutorialLoop(copy.deepcopy(fp32.autoencoder), copy.deepcopy(fp32.discriminator),
                            fp32.effective_lr["generator"], tuple(t.betas), t.kl_weight, t.adv_weight)
    images = torch.rand(args.batch, 1, *[args.size] * n, generator=torch.Generator().manual_seed(0)).to(device)

    # Same math, and what each mode changes: --diff-steps steps of each from the same weights and noise.
    after_one, after, first_step_s, memory = train_from_same_weights(
        trainers, lambda tr: tr.train_step(images, adversarial=True), weights, args.diff_steps, device)
    torch.manual_seed(1)
    baseline.step(images)
    tutorial_diff = max_diff(after_one, [p.detach() for m in (baseline.ae, baseline.disc) for p in m.parameters()])
    after["start"] = start
    moved = l2_diff(after["fp32"], start)

    steps = {"tutorial": baseline.step, **{m: (lambda x, tr=tr: tr.train_step(x, adversarial=True)) for m, tr in trainers.items()}}
    step_s = interleaved_times(steps, images, args.steps, args.rounds, device)
    base_s = step_s["tutorial"]
    result = {
        "benchmark": "vae_gan_train_step",
        **run_info(args.device, load_before),
        "spatial_dims": n,
        "image_size": args.size,
        "batch_size": args.batch,
        "channels": json.loads(args.channels),
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "baseline_imgs_per_s": args.batch / base_s,
        "medgen_imgs_per_s": args.batch / step_s["fp32"],
        "ratio": base_s / step_s["fp32"],
        "max_weight_diff_after_one_step": tutorial_diff,
        "modes": mode_figures("imgs", args.batch, step_s, first_step_s, after, args.diff_steps, memory),
        "fp32_weights_moved_l2": moved,
    }
    if args.profile:
        prof = profile_steps({k: steps[k] for k in ("tutorial", "fp32", "graphs") if k in steps}, images, args.steps)
        # What medgen's step would take if everything but its convolutions cost nothing: no rewrite of the
        # step that keeps its math can beat the tutorial loop by more than this on this machine.
        bound = step_s["tutorial"] * 1e3 / prof["fp32"]["convolution_ms"]
        result["profile"] = {**prof, "fp32_ratio_bound_convolutions_only": bound}
        print_profile(prof)
        print(f"medgen fp32 with every non-convolution op free would be {bound:.2f}x the tutorial loop")
    print(f"{'step':<16}{'images/s':>10}{'x tutorial':>12}{'x fp32':>8}{'first step s':>14}{'weight diff':>13}")
    print(f"{'tutorial-style':<16}{result['baseline_imgs_per_s']:>10.2f}{1.0:>12.2f}{step_s['fp32'] / base_s:>8.2f}")
    for mode, r in result["modes"].items():
        print(f"{'medgen ' + mode:<16}{r['imgs_per_s']:>10.2f}{r['ratio_to_tutorial']:>12.2f}{r['ratio_to_fp32']:>8.2f}"
              f"{r['first_step_s']:>14.1f}{r['relative_weight_diff_to_fp32']:>13.2e}"
              + (f"  peak {r['peak_mb']:.0f} MB, held {r['held_mb']:.0f} MB" if "peak_mb" in r else ""))
    print(f"tutorial vs medgen fp32 weights after one step differ by at most {tutorial_diff:.1e}; rel. diff: L2 distance "
          f"to fp32's weights after {args.diff_steps} steps over the L2 distance fp32 moved them ({moved:.1e})")
    return write_result(result, args.json)


if __name__ == "__main__":
    main()
