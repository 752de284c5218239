"""Autoencoder quality against training time: contenders trained for the same wall-clock budget on the same split.

Each contender is a medgen VAE config (a file plus overrides): MONAI's ``2d_autoencoderkl`` tutorial recipe,
the three scenarios of the VAE configuration guide ("Fast", "Balanced" = ``vae_config.json``, "High Quality"),
medgen's recipe (``configs/radiograph_2d.json``) and the recipe with one choice undone (the ablation rows).
They train one after the other in this process, each with ``max_time`` set to the budget; the perceptual
term is off for all (its pretrained network is not shipped). A copy of the autoencoder's weights is kept at
fixed shares of the budget, and after training each copy is evaluated outside the clock on the held-out WHOLE
images through the tiled path ``medgen reconstruct`` runs (:func:`medgen.inference.autoencoder.reconstruct_item`):
PSNR, SSIM, ``hf_ratio``, ``std_ratio`` (:func:`medgen.metrics.whole_image_quality`) and the seam ratio.

Writes ``<out>.json`` (every contender's settings, steps, curve and final measures, the machine's load),
``<out>_curves.png`` (PSNR and SSIM against minutes) and ``<out>_examples.png`` (three held-out images:
input | reconstruction | error, for the best contender and the tutorial).

    python benchmarks/bench_quality.py --data public_data/panoramic --minutes 30 --out benchmarks/results/quality_2d_cpu
    python benchmarks/bench_quality.py --dims 3 --data public_data/ct --data-source edente --minutes 30 --out benchmarks/results/quality_3d_cpu
    python benchmarks/bench_quality.py --quick --out /tmp/quality_quick   # tiny sizes on demo data, end to end
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import numpy as np
import torch

from medgen.config import load_config
from medgen.data.transforms import deterministic_transforms
from medgen.inference.autoencoder import reconstruct_item
from medgen.io.discovery import discover_items
from medgen.metrics import whole_image_quality
from medgen.models.autoencoder import build_autoencoder
from medgen.models.tiled import tiling_for
from medgen.training.vae import VAETrainer

ROOT = Path(__file__).resolve().parents[1]
MEASURES = ("psnr", "ssim", "hf_ratio", "std_ratio", "seam_ratio")

# name -> (config file, overrides, what it is). Overrides are config keys, as `--set` takes them.
TUTORIAL = [  # MONAI tutorials generation/2d_autoencoderkl: network, losses, optimisers
    "autoencoder_def.channels=[128,128,256]", "autoencoder_def.latent_channels=3", "autoencoder_def.num_res_blocks=2",
    "autoencoder_def.attention_levels=[false,false,false]", "autoencoder_def.with_encoder_nonlocal_attn=false",
    "autoencoder_def.with_decoder_nonlocal_attn=false", "discriminator_def.channels=64", "discriminator_def.num_layers_d=3",
    "discriminator_def.norm=BATCH", "autoencoder_train.recon_loss=l1", "autoencoder_train.kl_weight=1e-6",
    "autoencoder_train.adv_weight=0.01", "autoencoder_train.adv_warmup_epochs=10", "autoencoder_train.lr=1e-4",
    "autoencoder_train.disc_lr=5e-4", "autoencoder_train.betas=[0.9,0.999]", "autoencoder_train.lr_scheduler=constant",
]
SEED_FAST = [
    "autoencoder_def.latent_channels=4", "autoencoder_def.channels=[32,64,128]", "autoencoder_def.num_res_blocks=1",
    "autoencoder_def.attention_levels=[false,false,false]", "autoencoder_def.with_encoder_nonlocal_attn=false",
    "autoencoder_def.with_decoder_nonlocal_attn=false", "autoencoder_train.batch_size=16", "autoencoder_train.lr=5e-5",
    "autoencoder_train.kl_weight=1e-6",
]
SEED_HQ = [
    "autoencoder_def.latent_channels=8", "autoencoder_def.channels=[128,256,512]", "autoencoder_def.num_res_blocks=3",
    "autoencoder_def.attention_levels=[false,true,true]", "autoencoder_train.batch_size=4", "autoencoder_train.lr=1e-5",
    "autoencoder_train.kl_weight=5e-7",
]
RECIPE = "configs/radiograph_2d.json"
CONTENDERS = {
    "tutorial": ("vae_config.json", TUTORIAL, "MONAI 2d_autoencoderkl tutorial recipe"),
    "seed_fast": ("vae_config.json", SEED_FAST, "guide's Fast scenario"),
    "seed_balanced": ("vae_config.json", [], "guide's Balanced scenario (vae_config.json)"),
    "seed_high_quality": ("vae_config.json", SEED_HQ, "guide's High Quality scenario"),
    "recipe": (RECIPE, [], "medgen's recipe (configs/radiograph_2d.json)"),
    # ablations: the recipe with one choice undone
    "recipe_constant_lr": (RECIPE, ["autoencoder_train.lr_scheduler=constant"], "recipe without warm-up + cosine (constant lr)"),
    "recipe_groups16": (RECIPE, ["autoencoder_def.norm_num_groups=16"],
                        "recipe with 16 GroupNorm groups (one or two channels each) instead of one"),
    "recipe_no_adv": (RECIPE, ["autoencoder_train.adv_weight=0"], "recipe without the adversarial term"),
    "recipe_groups4": (RECIPE, ["autoencoder_def.norm_num_groups=4"], "recipe with 4 GroupNorm groups instead of one"),
    "recipe_wide": (RECIPE, ["autoencoder_def.channels=[32,64,64]"],
                    "recipe with twice the channels, [32, 64, 64]"),
    "recipe_adv_early": (RECIPE, ["autoencoder_train.adv_warmup_epochs=1", "autoencoder_train.adv_weight=0.01"],
                         "recipe with the adversarial term from epoch 2 at weight 0.01"),
    "recipe_attention": (RECIPE, ["autoencoder_def.with_encoder_nonlocal_attn=true", "autoencoder_def.with_decoder_nonlocal_attn=true"],
                         "recipe with non-local attention in both bottlenecks"),
    "recipe_patch256": (RECIPE, ["autoencoder_train.patch_size=[256,256]", "autoencoder_train.batch_size=2"],
                        "recipe on 256x256 patches, batch 2 (same pixels per step)"),
}
RECIPE_3D = "configs/cbct_3d.json"
TUTORIAL_3D = [  # MONAI tutorials generation/3d_autoencoderkl: network, losses, optimisers (patches and batch: the recipe's)
    "autoencoder_def.channels=[32,64,64]", "autoencoder_def.latent_channels=3", "autoencoder_def.num_res_blocks=1",
    "autoencoder_def.norm_num_groups=16", "autoencoder_def.attention_levels=[false,false,true]",
    "autoencoder_def.with_encoder_nonlocal_attn=true", "autoencoder_def.with_decoder_nonlocal_attn=true",
    "discriminator_def.channels=32", "discriminator_def.num_layers_d=3", "discriminator_def.norm=BATCH",
    "autoencoder_train.recon_loss=l1", "autoencoder_train.kl_weight=1e-6", "autoencoder_train.adv_weight=0.01",
    "autoencoder_train.adv_warmup_epochs=5", "autoencoder_train.lr=1e-4", "autoencoder_train.disc_lr=5e-4",
    "autoencoder_train.betas=[0.9,0.999]", "autoencoder_train.lr_scheduler=constant",
]
# the public CT's held-out slab is 32 slices deep, and every contender's validation patch must fit it
CT_PATCH = ["autoencoder_train.patch_size=[32,64,64]"]
CONTENDERS_3D = {
    "tutorial": (RECIPE_3D, [*TUTORIAL_3D, *CT_PATCH], "MONAI 3d_autoencoderkl tutorial recipe"),
    "recipe": (RECIPE_3D, CT_PATCH, "medgen's recipe (configs/cbct_3d.json)"),
    "recipe_no_adv": (RECIPE_3D, [*CT_PATCH, "autoencoder_train.adv_weight=0"], "recipe without the adversarial term"),
    "recipe_l1": (RECIPE_3D, [*CT_PATCH, "autoencoder_train.recon_loss=l1"], "recipe with an L1 instead of an L2 reconstruction loss"),
    "recipe_uniform": (RECIPE_3D, [*CT_PATCH, "patch_min_foreground=0"], "recipe with uniform patches (no foreground redraws)"),
    "recipe_l1_uniform": (RECIPE_3D, [*CT_PATCH, "autoencoder_train.recon_loss=l1", "patch_min_foreground=0"],
                          "recipe with L1 and uniform patches (the first 3D recipe)"),
    "recipe_groups16": (RECIPE_3D, [*CT_PATCH, "autoencoder_def.norm_num_groups=16"],
                        "recipe with 16 GroupNorm groups (two or four channels each) instead of one"),
}
# Every contender: same data, perceptual term off (weights not shipped), whole-image evaluation done here (the
# trainer's own validation runs once, after the budget).
COMMON = ["autoencoder_train.perceptual_weight=0", "val_full_images=false", "autoencoder_train.max_epochs=100000",
          "autoencoder_train.val_interval=100000",
          "num_workers=0", "scan_workers=0"]
# --quick: every contender at a tiny size (two levels of 8 and 16 channels, 32x32 patches)
TINY_3D = ["autoencoder_def.channels=[8,16]", "autoencoder_def.norm_num_groups=4", "autoencoder_def.num_res_blocks=1",
           "autoencoder_def.attention_levels=[false,false]", "autoencoder_def.with_encoder_nonlocal_attn=false",
           "autoencoder_def.with_decoder_nonlocal_attn=false", "discriminator_def.channels=8",
           "discriminator_def.num_layers_d=2", "autoencoder_train.patch_size=[16,16,16]", "autoencoder_train.batch_size=2",
           "autoencoder_train.lr_warmup_steps=2", "autoencoder_train.adv_warmup_epochs=1", "num_val_images=1",
           "patches_per_image=2"]
TINY = ["autoencoder_def.channels=[8,16]", "autoencoder_def.norm_num_groups=4", "autoencoder_def.num_res_blocks=1",
        "autoencoder_def.attention_levels=[false,false]", "discriminator_def.channels=8", "discriminator_def.num_layers_d=2",
        "autoencoder_train.patch_size=[32,32]", "autoencoder_train.batch_size=2", "autoencoder_train.lr_warmup_steps=2",
        "autoencoder_train.adv_warmup_epochs=1", "num_val_images=1"]


class SnapshotTrainer(VAETrainer):
    """The VAE trainer, keeping an in-memory copy of the autoencoder's weights each time training passes one of
    ``snapshot_at`` (seconds of its clock); copying takes milliseconds, so the budget is not spent on it."""

    snapshot_at: list[float] = []

    def on_train_start(self) -> None:
        super().on_train_start()
        self.snapshots: list[dict] = []

    def train_step(self, images, *args):
        losses = super().train_step(images, *args)
        if len(self.snapshots) < len(self.snapshot_at) and self.agreed_time >= self.snapshot_at[len(self.snapshots)]:
            self.snapshots.append(dict(seconds=self.agreed_time, step=self.global_step,
                                       weights={k: v.detach().clone() for k, v in self.autoencoder.state_dict().items()}))
        return losses


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def evaluate(model, cfg, items) -> dict:
    """Whole-image measures of ``model`` over ``items`` (means, and per image)."""
    tiling, chain = tiling_for(cfg), deterministic_transforms(cfg, cfg.autoencoder_train.patch_size)
    model.eval()
    per_image = []
    with torch.no_grad():
        for item in items:
            rec = reconstruct_item(model, cfg, item["image"], tiling, chain)
            per_image.append({**whole_image_quality(rec.output, rec.input), "seam_ratio": rec.seam_ratio})
    means = {m: statistics.fmean(v for v in (p[m] for p in per_image) if math.isfinite(v)) if any(
        math.isfinite(p[m]) for p in per_image) else None for m in MEASURES}
    return {**means, "images": len(per_image), "per_image": per_image}


def train_contender(name: str, config: str, overrides: list[str], budget_s: float, shares: list[float], run_dir: Path):
    cfg = load_config(ROOT / config, [*overrides, f"run_dir={run_dir}",
                                      f"max_time={time.strftime('%H:%M:%S', time.gmtime(budget_s))}"])
    SnapshotTrainer.snapshot_at = [s * budget_s for s in shares]
    trainer = SnapshotTrainer.from_config(cfg)
    start_load = load_average()
    t0 = time.monotonic()
    trainer.fit()
    wall = time.monotonic() - t0
    # the end: the clock at the step boundary where the budget was found spent (before the final validation)
    snaps = trainer.snapshots + [dict(seconds=trainer.agreed_time, step=trainer.global_step,
                                      weights=trainer.autoencoder.state_dict())]
    info = dict(steps=trainer.global_step, epochs=trainer.epoch + trainer.step_in_epoch / max(1, trainer.steps_in_epoch),
                train_seconds=trainer.agreed_time, with_final_validation_seconds=trainer.elapsed_time, fit_wall_seconds=wall, load_average_start=start_load,
                load_average_end=load_average(), images_seen=trainer.global_step * cfg.autoencoder_train.batch_size,
                parameters=sum(p.numel() for p in trainer.autoencoder.parameters()))
    return cfg, info, snaps


def describe(cfg) -> dict:
    ae, t = cfg.autoencoder_def, cfg.autoencoder_train
    f = ae.downsample_factor
    return dict(channels=list(ae.channels), latent_channels=ae.latent_channels, downsampling=f,
                compression=f ** cfg.spatial_dims * ae.in_channels / ae.latent_channels, num_res_blocks=ae.num_res_blocks,
                attention_levels=list(ae.attention_levels), nonlocal_attention=[ae.with_encoder_nonlocal_attn, ae.with_decoder_nonlocal_attn],
                patch_size=list(t.patch_size), batch_size=t.batch_size, lr=t.lr, disc_lr=t.disc_lr, betas=list(t.betas),
                lr_scheduler=t.lr_scheduler, lr_warmup_steps=t.lr_warmup_steps, kl_weight=t.kl_weight,
                adv_weight=t.adv_weight, adv_warmup_epochs=t.adv_warmup_epochs, perceptual_weight=t.perceptual_weight,
                discriminator=dict(channels=cfg.discriminator_def.channels, layers=cfg.discriminator_def.num_layers_d,
                                   norm=cfg.discriminator_def.norm))


def run(args) -> dict:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_quality_"))
    data = Path(args.data)
    shares = [k / args.points for k in range(1, args.points)]  # the last point is the end of the budget
    results = dict(budget_minutes=args.minutes, data=str(data), quick=args.quick, curve_images=args.curve_images,
                   final_images=args.final_images,
                   machine=dict(platform=platform.platform(), cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                                torch=torch.__version__, device="cpu"),
                   common_overrides=[*COMMON, f"data_source={args.data_source}"], contenders={})
    common = results["common_overrides"]
    examples = {}
    table, tiny = (CONTENDERS_3D, TINY_3D) if args.dims == 3 else (CONTENDERS, TINY)
    results["dims"] = args.dims
    for name in args.contenders:
        config, overrides, what = table[name]
        sets = [*common, f"data_base_dir={data / 'train'}", f"val_dir={data / 'val'}", f"cache_dir={work / 'cache'}",
                *overrides, *(tiny if args.quick else [])]
        logging.getLogger("medgen.train").info("contender %s: %s", name, what)
        cfg, info, snaps = train_contender(name, config, sets, args.minutes * 60, shares, work / name)
        _, val_items = discover_items(cfg)
        val_items = sorted(val_items, key=lambda i: str(i["image"]))
        model = build_autoencoder(cfg.autoencoder_def)
        curve = []
        for snap in snaps:
            model.load_state_dict(snap["weights"])
            is_final = snap is snaps[-1]
            measured = evaluate(model, cfg, val_items[: args.final_images] if is_final else val_items[: args.curve_images])
            if is_final:
                final = measured
                head = measured["per_image"][: args.curve_images]
                measured = {m: statistics.fmean(p[m] for p in head if math.isfinite(p[m])) for m in MEASURES}
                examples[name] = example_rows(model, cfg, val_items[: 3])
            curve.append(dict(minutes=snap["seconds"] / 60, step=snap["step"], **{m: measured[m] for m in MEASURES}))
        # the process's peak resident memory so far (training and evaluation; a running maximum over the contenders)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 if resource else None
        results["contenders"][name] = dict(description=what, config=config, overrides=overrides, settings=describe(cfg),
                                           **info, peak_rss_gb_so_far=peak, curve=curve, final={k: v for k, v in final.items() if k != "per_image"},
                                           final_per_image=final["per_image"])
        (out.with_suffix(".json")).write_text(json.dumps(results, indent=2) + "\n")  # kept as each contender ends
    best = max(results["contenders"], key=lambda n: results["contenders"][n]["final"]["psnr"])
    results["best_final_psnr"] = best
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    plot_curves(results, Path(f"{out}_curves.png"))
    shown = [n for n in dict.fromkeys([best, "recipe", "tutorial"]) if n in examples][:2]
    example_figure({n: examples[n] for n in shown}, Path(f"{out}_examples.png"))
    return results


def example_rows(model, cfg, items) -> list[tuple[np.ndarray, np.ndarray]]:
    tiling, chain = tiling_for(cfg), deterministic_transforms(cfg, cfg.autoencoder_train.patch_size)
    rows = []
    with torch.no_grad():
        for item in items:
            rec = reconstruct_item(model, cfg, item["image"], tiling, chain)
            x, y = rec.input[0].numpy(), rec.output[0].numpy()
            if x.ndim == 3:  # a volume: its middle slice across the first axis (axial: medgen reads volumes z, y, x)
                x, y = x[x.shape[0] // 2], y[y.shape[0] // 2]
            rows.append((x, y))
    return rows


def plot_curves(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name, c in results["contenders"].items():
        style = "-" if not name.startswith("recipe_") else "--"
        width = 2.5 if name == "recipe" else 1.3
        for ax, m in zip(axes, ("psnr", "ssim", "hf_ratio")):
            ax.plot([p["minutes"] for p in c["curve"]], [p[m] for p in c["curve"]], style, marker="o", ms=3, lw=width, label=name)
    for ax, label in zip(axes, ("whole-image PSNR (dB)", "whole-image SSIM", "hf_ratio (1 = input's detail)")):
        ax.set_xlabel("training minutes")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    n = results["curve_images"]
    fig.suptitle(f"Held-out whole images (first {n}), tiled as medgen reconstruct; budget {results['budget_minutes']:g} min per contender")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def example_figure(examples: dict, path: Path, size: int = 320) -> None:
    """Rows of input | reconstruction | 4x absolute error, one block of rows per contender, with labels."""
    from PIL import Image, ImageDraw

    def panel(a: np.ndarray) -> Image.Image:
        return Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)

    rows = [(name, x, y) for name, pairs in examples.items() for x, y in pairs]
    sheet = Image.new("L", (3 * size, len(rows) * (size + 14)), 255)
    draw = ImageDraw.Draw(sheet)
    for r, (name, x, y) in enumerate(rows):
        top = r * (size + 14)
        for c, img in enumerate((x, y, 4 * np.abs(y - x))):
            sheet.paste(panel(img), (c * size, top + 14))
        draw.text((4, top + 1), f"{name}: input | reconstruction | 4x |error|", fill=0)
    sheet.save(path, optimize=True)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="folder with train/ and val/ (as medgen prepare-public-data writes panoramic/)")
    p.add_argument("--minutes", type=float, default=30.0, help="training budget per contender")
    p.add_argument("--contenders", default=None, help=f"comma-separated, from {', '.join(CONTENDERS)} (default: all)")
    p.add_argument("--points", type=int, default=6, help="evaluations per contender, evenly over the budget")
    p.add_argument("--curve-images", type=int, default=12, help="held-out images of the curve points (the final: all)")
    p.add_argument("--final-images", type=int, default=None, help="held-out images of the final evaluation (default: all)")
    p.add_argument("--out", default=None, help="output path without suffix (default benchmarks/results/quality_<dims>d_cpu)")
    p.add_argument("--work", default=None, help="run directories (default: a temporary folder)")
    p.add_argument("--data-source", default="both", choices=("both", "edente", "dente"),
                   help="classes to train and evaluate on (the public CT is one volume, under edente/)")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2,
                   help="2: panoramics (configs/radiograph_2d.json); 3: volumes (configs/cbct_3d.json, whole-volume tiled evaluation)")
    p.add_argument("--quick", action="store_true", help="tiny models on demo data for seconds: checks the pipeline")
    args = p.parse_args(argv)
    table = CONTENDERS_3D if args.dims == 3 else CONTENDERS
    args.contenders = args.contenders.split(",") if args.contenders else (["tutorial", "recipe"] if args.quick else list(table))
    unknown = [c for c in args.contenders if c not in table]
    if unknown:
        p.error(f"unknown contender {unknown[0]} for --dims {args.dims}; choose from {', '.join(table)}")
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / "results" / f"quality_{args.dims}d_cpu")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        from medgen.data.demo import write_demo_dataset

        args.work = args.work or tempfile.mkdtemp(prefix="bench_quality_")
        data = Path(args.work) / "data"
        size = (40, 48) if args.dims == 2 else (24, 32)
        write_demo_dataset(data / "train", spatial_dims=args.dims, count=4 if args.dims == 2 else 1, size=size[0], seed=0)
        write_demo_dataset(data / "val", spatial_dims=args.dims, count=2 if args.dims == 2 else 1, size=size[1], seed=1)
        args.data, args.minutes, args.points = str(data), args.minutes if args.minutes < 1 else 0.05, min(args.points, 3)
    elif not args.data:
        p.error("--data is required (or --quick)")
    return run(args)


if __name__ == "__main__":
    main()
