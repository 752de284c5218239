"""The VAE-GAN trainer: AutoencoderKL with reconstruction + KL + perceptual + patch-adversarial losses.

What differs from the other methods: the two networks, :meth:`VAETrainer.train_step` and the validation
measures (PSNR, SSIM, L1 of reconstructions; the best PSNR writes ``best.pt``). The loop, checkpoints,
resume, logging and launch are :class:`medgen.training.base.Trainer`'s.
"""

from __future__ import annotations

import torch
from torch import nn

from medgen.config import VAEConfig
from medgen.data.datasets import build_dataset, make_val_loader, shard
from medgen.data.transforms import deterministic_transforms
from medgen.data.whole import model_input, to_image_shape
from medgen.losses.vae import adversarial_loss, build_perceptual_loss, kl_loss, missing_perceptual_weights, reconstruction_loss
from medgen.metrics import psnr, ssim
from medgen.models.autoencoder import build_autoencoder, build_discriminator
from medgen.models.tiled import tiled_decode, tiled_encode, tiling_for
from medgen.training.base import Trainer, wrap_ddp
from medgen.training.distributed import all_gather_objects, all_reduce_sum
from medgen.training.images import comparison_grid, fit


class VAETrainer(Trainer):
    """Trains AutoencoderKL + PatchDiscriminator from a :class:`VAEConfig` (see :class:`Trainer` for the arguments).

    Each batch is one generator step and, after ``adv_warmup_epochs``, one discriminator step.
    """

    name = "vae"
    method_name = "VAE-GAN"
    config_cls = VAEConfig
    command_help = "train the AutoencoderKL (VAE-GAN; same as scripts/train_vae.py)"
    example_config, example_set = "vae_config.json", "autoencoder_train.lr=1e-5"
    resume_keys = ("autoencoder_def",)
    best_metric = "psnr"

    @staticmethod
    def data_patch_size(cfg: VAEConfig) -> tuple[int, ...]:
        return tuple(cfg.autoencoder_train.patch_size)

    @classmethod
    def pretrained_networks(cls, cfg: VAEConfig) -> list[tuple[str, str | None]]:
        t = cfg.autoencoder_train
        if t.perceptual_weight <= 0:
            return []
        problem = missing_perceptual_weights(t)
        return [(f"perceptual network {t.perceptual_network}", problem and f"{problem}; see `medgen weights list`")]

    def build(self) -> None:
        cfg, t, dev = self.cfg, self.cfg.autoencoder_train, self.dist.device
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

        self.track(autoencoder=self.autoencoder, discriminator=self.discriminator)
        self.opt_g, _, self.scaler_g = self.build_optimizer("generator", self.autoencoder, t.lr, "_g")
        self.opt_d, _, self.scaler_d = self.build_optimizer("discriminator", self.discriminator,
                                                            t.disc_lr if t.disc_lr is not None else t.lr, "_d")

        self.ae_ddp = wrap_ddp(self.autoencoder, self.dist)
        self.disc_ddp = wrap_ddp(self.discriminator, self.dist)

    def compiled_networks(self) -> list[nn.Module]:
        return [self.autoencoder, self.discriminator]

    def on_data(self) -> None:
        self.val_shard = shard(self.val_items, self.dist.rank, self.dist.world_size)
        self.val_ds = build_dataset(self.cfg, self.val_shard, self.patch_size, train=False, rank=self.dist.rank)

    @property
    def adversarial(self) -> bool:
        """Whether this epoch trains the adversarial terms (after the warm-up, with a non-zero weight)."""
        t = self.cfg.autoencoder_train
        return self.epoch >= t.adv_warmup_epochs and t.adv_weight > 0

    def train_step(self, images: torch.Tensor, adversarial: bool | None = None) -> dict[str, torch.Tensor]:
        """One generator step then (when ``adversarial``, default: :attr:`adversarial`) one discriminator step;
        returns the detached losses."""
        t = self.cfg.autoencoder_train
        adversarial = self.adversarial if adversarial is None else adversarial
        zero = images.new_zeros(())
        with self.precision.autocast():
            recon, z_mu, z_sigma = self.graphs(self.ae_ddp, images)
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
                logits_fake = self.graphs(self.discriminator, recon)[-1]
                l_adv = self.adv_loss(logits_fake.float(), target_is_real=True, for_discriminator=False)
                loss_g = loss_g + t.adv_weight * l_adv
        self.optimizer_step(loss_g, self.opt_g, self.scaler_g, self.autoencoder, t.grad_clip)

        l_real = l_fake = zero
        if adversarial:
            self.discriminator.requires_grad_(True)
            with self.precision.autocast():
                # real and fake in one forward (instance/group norm: same result as two, half the calls)
                logits = self.graphs(self.disc_ddp, torch.cat([images, recon.detach()]))[-1].float()
                real, fake = logits.split(images.shape[0])
                l_real = self.adv_loss(real, target_is_real=True, for_discriminator=True)
                l_fake = self.adv_loss(fake, target_is_real=False, for_discriminator=True)
                loss_d = t.adv_weight * 0.5 * (l_real + l_fake)
            self.optimizer_step(loss_d, self.opt_d, self.scaler_d, self.discriminator, t.grad_clip)
        losses = dict(recon=l_rec, kl=l_kl, perceptual=l_p, gen_adv=l_adv, disc_real=l_real, disc_fake=l_fake)
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """PSNR, SSIM and L1 of reconstructions (z_mu decoded) over the whole validation set, all ranks: on the
        validation patches, and with ``val_full_images`` also on the whole images, tiled as ``medgen reconstruct``
        runs them (``full_psnr``, ``full_ssim``; the grid then shows whole images)."""
        if not self.val_items:
            return {}
        self.autoencoder.eval()
        sums = torch.zeros(6, dtype=torch.float64, device=self.dist.device)  # psnr, ssim, l1, count, full psnr, full ssim
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
                k = self.cfg.num_val_images  # plain tensors: they are gathered from every rank
                shown = [(a.cpu(), b.cpu()) for a, b in zip(x[:k].as_subclass(torch.Tensor), rec[:k].as_subclass(torch.Tensor))]
        if self.cfg.val_full_images:
            shown = self._validate_whole(sums)
        all_reduce_sum(sums)
        # the grid shows num_val_images images from all ranks' shards, not only rank 0's
        pairs = [p for g in all_gather_objects(shown) if g for p in g][: self.cfg.num_val_images]
        self.autoencoder.train()
        n = max(sums[3].item(), 1.0)
        metrics = {"psnr": sums[0].item() / n, "ssim": sums[1].item() / n, "l1": sums[2].item() / n}
        if self.cfg.val_full_images:
            metrics.update(full_psnr=sums[4].item() / len(self.val_items), full_ssim=sums[5].item() / len(self.val_items))
        if self.dist.is_main and self.writer is not None and pairs:
            grid = comparison_grid([[p[0] for p in pairs], [p[1] for p in pairs]])
            self.writer.add_image("val/input_vs_reconstruction", grid, self.global_step)
        return metrics

    def _validate_whole(self, sums: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Whole-image PSNR/SSIM of this rank's validation images into ``sums[4:6]``; returns the first
        ``num_val_images`` (input, reconstruction) pairs, scaled to fit the grid."""
        cfg = self.cfg
        tiling = tiling_for(cfg)
        chain = deterministic_transforms(cfg, cfg.autoencoder_train.patch_size)
        shown = []
        for item in self.val_shard:
            x, image_shape, _ = model_input(cfg, item["image"], chain)
            x = x.to(self.dist.device)
            with self.precision.autocast():
                rec = tiled_decode(self.autoencoder, tiled_encode(self.autoencoder, x, tiling)[0], tiling)
            x = to_image_shape(x[0], image_shape, cfg.patch_mode)[None]
            rec = to_image_shape(rec[0].float().clamp(0, 1), image_shape, cfg.patch_mode)[None]
            sums[4] += psnr(rec, x, reduction="none").clamp(max=100.0).sum().double()
            sums[5] += ssim(rec, x, reduction="none").sum().double()
            if len(shown) < cfg.num_val_images:
                shown.append((fit(x[0].cpu()), fit(rec[0].cpu())))
        return shown

    def describe_metrics(self, metrics: dict[str, float]) -> str:
        if "psnr" in metrics and "ssim" in metrics:
            return f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}"
        return super().describe_metrics(metrics)
