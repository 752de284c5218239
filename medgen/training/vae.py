"""The VAE-GAN trainer: AutoencoderKL with reconstruction + KL + perceptual + patch-adversarial losses.

One process, one GPU or many (torchrun, DDP). Rank 0 alone writes TensorBoard, the console progress and
checkpoints; every rank trains on its own shard of the data each epoch.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import medgen
from medgen.config import ConfigError, VAEConfig, to_dict
from medgen.data.datasets import build_dataset, discover_items, make_train_loader, make_val_loader, shard
from medgen.distributed import DistInfo, all_reduce_sum, scaled_lr
from medgen.logging import comparison_grid
from medgen.losses.vae import adversarial_loss, build_perceptual_loss, kl_loss, reconstruction_loss
from medgen.metrics import psnr, ssim
from medgen.models.autoencoder import build_autoencoder, build_discriminator
from medgen.training import run as run_cli
from medgen.training.run import (
    Precision,
    load_run_checkpoint,
    log_epoch_scalars,
    optimizer_step,
    resume_path,
    save_run_checkpoint,
    step_schedulers,
    wrap_ddp,
    write_run_info,
)
from medgen.training.data_check import checked_items

log = logging.getLogger("medgen.train")
LOSS_NAMES = ("recon", "kl", "perceptual", "gen_adv", "disc_real", "disc_fake")


class VAETrainer:
    """Trains AutoencoderKL + PatchDiscriminator from a :class:`VAEConfig`.

    Args:
        cfg: the validated config.
        dist_info: this process's rank, world size and device (see :func:`medgen.distributed.init_distributed`).
        train_items, val_items: ``{"image": path, "label": class}`` dicts; discovered from the config if None.
    """

    def __init__(self, cfg: VAEConfig, dist_info: DistInfo | None = None, train_items=None, val_items=None):
        self.cfg, self.dist = cfg, dist_info or DistInfo()
        t, dev = cfg.autoencoder_train, self.dist.device
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.autoencoder = build_autoencoder(cfg.autoencoder_def).to(dev)
        disc = build_discriminator(cfg.discriminator_def, cfg.spatial_dims, cfg.autoencoder_def.out_channels)
        if self.dist.distributed and cfg.discriminator_def.norm == "BATCH":
            disc = nn.SyncBatchNorm.convert_sync_batchnorm(disc)
        self.discriminator = disc.to(dev)
        self.perceptual = build_perceptual_loss(t, cfg.spatial_dims)
        if self.perceptual is not None:
            self.perceptual.to(dev)
        self.recon_loss = reconstruction_loss(t.recon_loss)
        self.adv_loss = adversarial_loss()

        # Effective LR = lr x world size (the per-process batch stays fixed, so the global batch grows).
        self.lr_g = scaled_lr(t.lr, self.dist.world_size)
        self.lr_d = scaled_lr(t.disc_lr if t.disc_lr is not None else t.lr, self.dist.world_size)
        # fused Adam: one kernel per step for all parameters (CPU and CUDA), same update rule
        adam = dict(betas=tuple(t.betas), weight_decay=t.weight_decay, fused=True)
        self.opt_g = torch.optim.Adam(self.autoencoder.parameters(), lr=self.lr_g, **adam)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr_d, **adam)
        self.sched_g, self.sched_d = (self._scheduler(o) for o in (self.opt_g, self.opt_d))
        self.precision = Precision(cfg.amp, dev)
        self.scaler_g, self.scaler_d = self.precision.scaler(), self.precision.scaler()

        self.ae_ddp = wrap_ddp(self.autoencoder, self.dist)
        self.disc_ddp = wrap_ddp(self.discriminator, self.dist)

        self.epoch, self.global_step, self.best_psnr = 0, 0, -math.inf
        torch.manual_seed(cfg.seed + self.dist.rank)  # per-rank randomness (latent sampling)

        patch = t.patch_size
        if train_items is None:
            train_items, val_items = checked_items(cfg, *discover_items(cfg), patch, self.dist)
        self.train_items, self.val_items = list(train_items), list(val_items or [])
        self.train_ds = build_dataset(cfg, self.train_items, patch, train=True, rank=self.dist.rank)
        val_shard = shard(self.val_items, self.dist.rank, self.dist.world_size)
        self.val_ds = build_dataset(cfg, val_shard, patch, train=False, rank=self.dist.rank)
        self.writer = None

    # ------------------------------------------------------------------ set-up
    def _scheduler(self, opt):
        if self.cfg.autoencoder_train.lr_scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.cfg.autoencoder_train.max_epochs)
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)

    # ------------------------------------------------------------------ one step
    def train_step(self, images: torch.Tensor, adversarial: bool) -> dict[str, torch.Tensor]:
        """One generator step then (when ``adversarial``) one discriminator step; returns detached losses."""
        t = self.cfg.autoencoder_train
        zero = images.new_zeros(())
        with self.precision.autocast():
            recon, z_mu, z_sigma = self.ae_ddp(images)
            recon32 = recon.float()
            l_rec = self.recon_loss(recon32, images)
            l_kl = kl_loss(z_mu.float(), z_sigma.float())
            loss_g = l_rec + t.kl_weight * l_kl
            l_p = self.perceptual(recon32, images) if self.perceptual is not None else zero
            if self.perceptual is not None:
                loss_g = loss_g + t.perceptual_weight * l_p
            l_adv = zero
            if adversarial:
                # Frozen and unwrapped: no parameter gradients and no DDP hooks for the discriminator here.
                self.discriminator.requires_grad_(False)
                logits_fake = self.discriminator(recon)[-1]
                l_adv = self.adv_loss(logits_fake.float(), target_is_real=True, for_discriminator=False)
                loss_g = loss_g + t.adv_weight * l_adv
        self.opt_g.zero_grad(set_to_none=True)
        optimizer_step(loss_g, self.opt_g, self.scaler_g, self.autoencoder, t.grad_clip)

        l_real = l_fake = zero
        if adversarial:
            self.discriminator.requires_grad_(True)
            with self.precision.autocast():
                # real and fake in one forward (instance/group norm: same result as two, half the calls)
                logits = self.disc_ddp(torch.cat([images, recon.detach()]))[-1].float()
                real, fake = logits.split(images.shape[0])
                l_real = self.adv_loss(real, target_is_real=True, for_discriminator=True)
                l_fake = self.adv_loss(fake, target_is_real=False, for_discriminator=True)
                loss_d = t.adv_weight * 0.5 * (l_real + l_fake)
            self.opt_d.zero_grad(set_to_none=True)
            optimizer_step(loss_d, self.opt_d, self.scaler_d, self.discriminator, t.grad_clip)
        return dict(recon=l_rec, kl=l_kl, perceptual=l_p, gen_adv=l_adv, disc_real=l_real, disc_fake=l_fake)

    # ------------------------------------------------------------------ epochs
    def train_epoch(self) -> None:
        cfg, t = self.cfg, self.cfg.autoencoder_train
        self.autoencoder.train()
        self.discriminator.train()
        adversarial = self.epoch >= t.adv_warmup_epochs and t.adv_weight > 0
        loader = make_train_loader(cfg, self.train_ds, t.batch_size, self.epoch, self.dist.rank, self.dist.world_size)
        sums = torch.zeros(len(LOSS_NAMES), device=self.dist.device)
        n_steps, n_images, t0 = 0, 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{t.max_epochs}", disable=not self.dist.is_main, leave=False, dynamic_ncols=True)
        for batch in bar:
            images = batch["image"].to(self.dist.device, non_blocking=True)
            losses = self.train_step(images, adversarial)
            sums += torch.stack([losses[k].detach().float() for k in LOSS_NAMES])
            n_steps += 1
            n_images += images.shape[0] * self.dist.world_size
            self.global_step += 1
            if self.global_step % cfg.log_interval == 0 and self.dist.is_main:
                # one device sync per log interval, not per step
                means = (sums / n_steps).tolist()
                rate = n_images / (time.perf_counter() - t0)
                bar.set_postfix(recon=f"{means[0]:.4f}", img_s=f"{rate:.1f}")
                self._log_scalars(dict(zip(LOSS_NAMES, means)), rate)
        step_schedulers(self.sched_g, self.sched_d)  # the discriminator idles during the adversarial warm-up
        if self.dist.is_main and n_steps:
            means = dict(zip(LOSS_NAMES, (sums / n_steps).tolist()))
            rate = n_images / (time.perf_counter() - t0)
            self._log_scalars(means, rate, prefix="epoch/")
            log.info("epoch %d/%d: %s, %.1f images/s", self.epoch + 1, t.max_epochs, " ".join(f"{k}={v:.4g}" for k, v in means.items()), rate)

    def _log_scalars(self, means: dict, rate: float, prefix: str = "") -> None:
        scalars = {f"loss/{k}": v for k, v in means.items()}
        log_epoch_scalars(self.writer, scalars, rate, self.opt_g, self.opt_d, self.global_step, prefix)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """PSNR, SSIM and L1 of reconstructions (z_mu decoded) over the whole validation set, all ranks."""
        self.autoencoder.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.dist.device)  # psnr, ssim, l1, count
        shown = None
        loader = make_val_loader(self.cfg, self.val_ds, self.cfg.autoencoder_train.batch_size)
        for batch in loader:
            x = batch["image"].to(self.dist.device)
            with self.precision.autocast():
                rec = self.autoencoder.reconstruct(x)
            rec = rec.float().clamp(0, 1)
            sums[0] += psnr(rec, x, reduction="none").clamp(max=100.0).sum().double()  # identical images: inf
            sums[1] += ssim(rec, x, reduction="none").sum().double()
            sums[2] += (rec - x).abs().flatten(1).mean(1).sum().double()
            sums[3] += x.shape[0]
            if shown is None:
                shown = (x[: self.cfg.num_val_images].cpu(), rec[: self.cfg.num_val_images].cpu())
        all_reduce_sum(sums)
        self.autoencoder.train()
        n = max(sums[3].item(), 1.0)
        metrics = {"psnr": sums[0].item() / n, "ssim": sums[1].item() / n, "l1": sums[2].item() / n, "count": int(sums[3].item())}
        if self.dist.is_main and self.writer is not None:
            for k in ("psnr", "ssim", "l1"):
                self.writer.add_scalar(f"val/{k}", metrics[k], self.global_step)
            if shown is not None:
                self.writer.add_image("val/input_vs_reconstruction", comparison_grid(shown), self.global_step)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "autoencoder": self.autoencoder.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_psnr": self.best_psnr,
            "world_size": self.dist.world_size,
            "config": to_dict(self.cfg),
            "medgen_version": medgen.__version__,
        }

    def save(self, name: str = "last.pt") -> None:
        """Every rank contributes its RNG state; rank 0 writes ``run_dir/checkpoints/<name>``."""
        save_run_checkpoint(self.state_dict, self.ckpt_dir / name, self.dist)

    def load(self, path: str | Path) -> None:
        """Restore everything from a checkpoint written by :meth:`save`."""
        ckpt = load_run_checkpoint(path, self.dist)
        saved_def = ckpt.get("config", {}).get("autoencoder_def")
        if saved_def is not None and saved_def != to_dict(self.cfg)["autoencoder_def"]:
            raise ConfigError(f"{path} was trained with a different autoencoder_def ({saved_def}); resume with the same architecture")
        self.autoencoder.load_state_dict(ckpt["autoencoder"])
        self.discriminator.load_state_dict(ckpt["discriminator"])
        for name in ("opt_g", "opt_d", "sched_g", "sched_d", "scaler_g", "scaler_d"):
            getattr(self, name).load_state_dict(ckpt[name])
        self.epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        self.best_psnr = float(ckpt["best_psnr"])

    def fit(self) -> dict[str, float]:
        """Train to ``max_epochs`` (resuming when asked); returns the last validation metrics."""
        t = self.cfg.autoencoder_train
        resume = resume_path(self.cfg)
        if resume is not None:
            self.load(resume)
        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            write_run_info(self.cfg, self.dist.world_size, {"generator": self.lr_g, "discriminator": self.lr_d})
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            log.info(
                "training on %d images (%d validation), world size %d, effective lr %.3g (lr %.3g x %d)%s",
                len(self.train_items), len(self.val_items), self.dist.world_size, self.lr_g, t.lr,
                self.dist.world_size, f", resumed from {resume} at epoch {self.epoch}" if resume else "",
            )
        metrics: dict[str, float] = {}
        try:
            while self.epoch < t.max_epochs:
                self.train_epoch()
                self.epoch += 1
                last = self.epoch == t.max_epochs
                if self.val_items and (self.epoch % t.val_interval == 0 or last):
                    metrics = self.validate()
                    if self.dist.is_main:
                        log.info("validation after epoch %d: PSNR %.2f dB, SSIM %.4f", self.epoch, metrics["psnr"], metrics["ssim"])
                    if metrics["psnr"] > self.best_psnr:
                        self.best_psnr = metrics["psnr"]
                        self.save("best.pt")
                if self.epoch % self.cfg.checkpoint_interval == 0 or last:
                    self.save("last.pt")
        finally:
            if self.writer is not None:
                self.writer.close()
        return metrics


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return run_cli.build_arg_parser(parser, "Train an AutoencoderKL (VAE-GAN) on dental radiographs.",
                                    "vae_config.json", "autoencoder_train.lr=1e-5")


def run(args: argparse.Namespace) -> int:
    return run_cli.launch(args, VAEConfig, VAETrainer)


def main(argv: list[str] | None = None) -> int:
    return run(build_arg_parser().parse_args(argv))


def register(subparsers) -> None:
    p = subparsers.add_parser("train-vae", help="train the AutoencoderKL (same as scripts/train_vae.py)")
    build_arg_parser(p)
    p.set_defaults(func=run)
