"""The adversarial trainers: WGAN-GP (seed 004) and GAN with BCE / hinge / least-squares losses (seed 002).

One class, :class:`WGANTrainer`, runs both (``wgan_train.method``): they share the networks, the data, the
``n_critic`` schedule, optimisers, EMA, logging and checkpoints and differ only in the two loss functions.
Launch, logging, checkpointing and resume work as for the VAE: one process, one GPU or many (torchrun, DDP);
rank 0 alone writes TensorBoard, the console progress and checkpoints; every rank trains on its own shard.

Real images come from the shared transform chain in [0, 1] and are mapped to the generator's Tanh range
[-1, 1] here (``x -> 2x - 1``); generated images are mapped back for metrics, grids and files.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

import medgen
from medgen.config import ConfigError, to_dict
from medgen.config.wgan import WGANConfig
from medgen.data.datasets import build_dataset, discover_items, make_train_loader
from medgen.distributed import DistInfo, scaled_lr
from medgen.losses.adversarial import (
    feature_matching_loss,
    gan_d_loss,
    gan_g_loss,
    gradient_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)
from medgen.metrics import FeatureExtractor, fid, histogram_intersection, histogram_wasserstein, kid, ssim_diversity
from medgen.models.wgan import build_critic, build_generator
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

# Logged terms of one critic step and one generator step, per method: name -> TensorBoard tag.
CRITIC_TERMS = {
    "wgan_gp": {"critic": "loss/critic", "wasserstein": "wgan/wasserstein", "gp": "loss/gp", "grad_norm": "wgan/grad_norm"},
    "gan": {"discriminator": "loss/discriminator", "real_logit": "gan/real_logit", "fake_logit": "gan/fake_logit"},
}
GENERATOR_TERMS = {"generator": "loss/generator", "generator_adv": "loss/generator_adv", "feature_matching": "loss/feature_matching"}


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> [0, 1], the range of real images, metrics and written files."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


class WGANTrainer:
    """Trains a generator against a critic from a :class:`WGANConfig` (``wgan_gp`` or ``gan``).

    Each real batch is one critic step; every ``n_critic``-th critic step is followed by one generator step.

    - ``wgan_gp``: critic loss ``-E[D(real)] + E[D(fake)] + lambda_gp * GP`` (the GP on per-sample random
      interpolates, computed outside autocast because fp16 input gradients underflow), generator loss
      ``-E[D(G(z))]``.
    - ``gan``: ``gan_loss`` (bce with logits, hinge or least squares) for both networks, plus
      ``feature_matching_weight`` x feature matching on the critic's penultimate features for the generator.

    Args:
        cfg: the validated config.
        dist_info: this process's rank, world size and device (see :func:`medgen.distributed.init_distributed`).
        train_items, val_items: ``{"image": path, "label": class}`` dicts; discovered (and checked) from the
            config if None. The validation items are the held-out real images the samples are compared with.
    """

    def __init__(self, cfg: WGANConfig, dist_info: DistInfo | None = None, train_items=None, val_items=None):
        self.cfg, self.dist = cfg, dist_info or DistInfo()
        t, dev = cfg.wgan_train, self.dist.device
        self.method = t.method
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        try:
            self.generator = build_generator(cfg.generator.network_section(), t.image_size).to(dev)
            self.critic = build_critic(cfg.critic.network_section(), t.image_size).to(dev)
        except (ValueError, TypeError) as e:  # e.g. a decoder backbone key the decoder does not know
            raise ConfigError(str(e)) from None
        # EMA of the generator (buffers too: the BatchNorm running statistics must match the averaged weights)
        self.ema = None
        if t.ema_decay is not None:
            self.ema = AveragedModel(self.generator, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)

        # Effective LR = lr x world size (the per-process batch stays fixed, so the global batch grows).
        self.lr_g = scaled_lr(t.lr_generator, self.dist.world_size)
        self.lr_d = scaled_lr(t.lr_discriminator, self.dist.world_size)
        # only trainable parameters: a ProgressiveDecoder backbone's own latent is frozen
        self.opt_g = torch.optim.Adam([p for p in self.generator.parameters() if p.requires_grad], lr=self.lr_g, betas=tuple(t.betas))
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=self.lr_d, betas=tuple(t.betas))
        self.sched_g, self.sched_d = (self._scheduler(o) for o in (self.opt_g, self.opt_d))
        self.precision = Precision(cfg.amp, dev)
        self.scaler_g, self.scaler_d = self.precision.scaler(), self.precision.scaler()

        self.g_ddp = wrap_ddp(self.generator, self.dist)
        # The gradient penalty's double backward goes through this wrapper, so its parameter gradients are
        # averaged across ranks with the rest of the critic loss.
        self.d_ddp = wrap_ddp(self.critic, self.dist)

        self.epoch, self.global_step = 0, 0
        # Validation noise from its own generator: sampling never moves the training random streams.
        self.fixed_noise = torch.randn(cfg.num_val_images, self.generator.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
        torch.manual_seed(cfg.seed + self.dist.rank)  # per-rank randomness (noise, interpolation weights)

        patch = cfg.patch_size
        if train_items is None:
            train_items, val_items = checked_items(cfg, *discover_items(cfg), patch, self.dist)
        self.train_items, self.val_items = list(train_items), list(val_items or [])
        self.train_ds = build_dataset(cfg, self.train_items, patch, train=True, rank=self.dist.rank)
        self.writer = None
        self._real_eval: torch.Tensor | None = None  # held-out real images in [0, 1], loaded at first validation
        self._real_stats: dict[str, torch.Tensor] = {}
        self._features: FeatureExtractor | None = None

    # ------------------------------------------------------------------ set-up
    def _scheduler(self, opt):
        t = self.cfg.wgan_train
        if t.lr_scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.max_epochs)
        if t.lr_scheduler == "cosine_warm_restarts":
            return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=t.T_0, T_mult=t.T_mult)
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)

    @property
    def sampling_generator(self) -> nn.Module:
        """The generator used for samples and metrics: the EMA copy when ``ema_decay`` is set."""
        return self.ema.module if self.ema is not None else self.generator

    def critic_terms(self) -> dict[str, str]:
        return CRITIC_TERMS[self.method]

    # ------------------------------------------------------------------ one step
    def critic_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """One critic update on ``real`` (B, 1, S, S) in [-1, 1]; returns the detached terms of
        :data:`CRITIC_TERMS` for the method."""
        t = self.cfg.wgan_train
        b = real.shape[0]
        # Always a full batch of noise: the generator's BatchNorm needs >= 2 samples even on a last batch of 1.
        with torch.no_grad(), self.precision.autocast():
            fake = self.generator(self.generator.sample_latent(t.batch_size))[:b]
        fake = fake.float()
        with self.precision.autocast():
            # real and fake in one forward (InstanceNorm is per sample: same result as two, half the calls)
            scores = self.d_ddp(torch.cat([real, fake])).float()
        real_s, fake_s = scores.split(b)
        if self.method == "wgan_gp":
            loss_w = wgan_critic_loss(real_s, fake_s)
            gp, grad_norm = gradient_penalty(self.d_ddp, real, fake)  # fp32, outside autocast
            loss = loss_w + t.lambda_gp * gp
            terms = dict(critic=loss, wasserstein=-loss_w, gp=gp, grad_norm=grad_norm)
        else:
            loss = gan_d_loss(t.gan_loss, real_s, fake_s)
            terms = dict(discriminator=loss, real_logit=real_s.mean(), fake_logit=fake_s.mean())
        self.opt_d.zero_grad(set_to_none=True)
        optimizer_step(loss, self.opt_d, self.scaler_d, self.critic, t.grad_clip)
        return {k: v.detach() for k, v in terms.items()}

    def generator_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """One generator update; ``real`` (the last critic batch) feeds feature matching. Returns the detached
        terms of :data:`GENERATOR_TERMS`."""
        t = self.cfg.wgan_train
        fm_weight = t.feature_matching_weight if self.method == "gan" else 0.0
        # Frozen and unwrapped: no critic parameter gradients and no DDP hooks for the critic here.
        self.critic.requires_grad_(False)
        try:
            with self.precision.autocast():
                fake = self.g_ddp(self.generator.sample_latent(t.batch_size))
                l_fm = fake.new_zeros((), dtype=torch.float32)
                if fm_weight > 0:
                    scores, fake_feats = self.critic(fake, return_features=True)
                    with torch.no_grad():
                        _, real_feats = self.critic(real, return_features=True)
                    l_fm = feature_matching_loss(real_feats.float(), fake_feats.float())
                else:
                    scores = self.critic(fake)
                scores = scores.float()
                l_adv = wgan_generator_loss(scores) if self.method == "wgan_gp" else gan_g_loss(t.gan_loss, scores)
                loss = l_adv + fm_weight * l_fm
            self.opt_g.zero_grad(set_to_none=True)
            optimizer_step(loss, self.opt_g, self.scaler_g, self.generator, t.grad_clip)
        finally:
            self.critic.requires_grad_(True)
        if self.ema is not None:
            self.ema.update_parameters(self.generator)
        return dict(generator=loss.detach(), generator_adv=l_adv.detach(), feature_matching=l_fm.detach())

    # ------------------------------------------------------------------ epochs
    def train_epoch(self) -> dict[str, float]:
        """One pass over this rank's shard; returns the epoch means of every logged term."""
        cfg, t = self.cfg, self.cfg.wgan_train
        self.generator.train()
        self.critic.train()
        d_names, g_names = list(self.critic_terms()), list(GENERATOR_TERMS)
        loader = make_train_loader(cfg, self.train_ds, t.batch_size, self.epoch, self.dist.rank, self.dist.world_size)
        d_sums = torch.zeros(len(d_names), device=self.dist.device)
        g_sums = torch.zeros(len(g_names), device=self.dist.device)
        n_d = n_g = n_images = 0
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{t.max_epochs}", disable=not self.dist.is_main, leave=False, dynamic_ncols=True)
        for batch in bar:
            real = batch["image"].to(self.dist.device, non_blocking=True) * 2.0 - 1.0
            d = self.critic_step(real)
            d_sums += torch.stack([d[k].float() for k in d_names])
            n_d += 1
            n_images += real.shape[0] * self.dist.world_size
            self.global_step += 1
            if self.global_step % t.n_critic == 0:
                g = self.generator_step(real)
                g_sums += torch.stack([g[k].float() for k in g_names])
                n_g += 1
            if self.global_step % cfg.log_interval == 0 and self.dist.is_main:
                # one device sync per log interval, not per step
                means = self._means(d_names, d_sums, n_d, g_names, g_sums, n_g)
                rate = n_images / (time.perf_counter() - t0)
                bar.set_postfix({d_names[0]: f"{means[d_names[0]]:.4f}", "img_s": f"{rate:.1f}"})
                self._log_scalars(means, rate)
        step_schedulers(self.sched_g, self.sched_d)  # n_critic above the steps so far: G has not stepped yet
        means = self._means(d_names, d_sums, n_d, g_names, g_sums, n_g)
        if self.dist.is_main and n_d:
            rate = n_images / (time.perf_counter() - t0)
            self._log_scalars(means, rate, prefix="epoch/")
            log.info("epoch %d/%d: %s, %.1f images/s", self.epoch + 1, t.max_epochs,
                     " ".join(f"{k}={v:.4g}" for k, v in means.items()), rate)
        return means

    @staticmethod
    def _means(d_names, d_sums, n_d, g_names, g_sums, n_g) -> dict[str, float]:
        out = dict(zip(d_names, (d_sums / max(n_d, 1)).tolist()))
        if n_g:  # no generator step yet (n_critic larger than the steps so far): nothing to report
            out.update(zip(g_names, (g_sums / n_g).tolist()))
        return out

    def _log_scalars(self, means: dict[str, float], rate: float, prefix: str = "") -> None:
        tags = {**self.critic_terms(), **GENERATOR_TERMS}
        scalars = {tags[k]: v for k, v in means.items()}
        log_epoch_scalars(self.writer, scalars, rate, self.opt_g, self.opt_d, self.global_step, prefix)

    # ------------------------------------------------------------------ validation (rank 0)
    @torch.no_grad()
    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (N, 1, S, S) from ``noise`` (N, z_dim) with :attr:`sampling_generator` in eval mode,
        ``batch_size`` at a time."""
        gen, dev = self.sampling_generator, self.dist.device
        was_training = gen.training
        gen.eval()
        try:
            chunks = []
            for z in noise.split(self.cfg.wgan_train.batch_size):
                with self.precision.autocast():
                    chunks.append(to_unit_range(gen(z.to(dev))).cpu())
        finally:
            gen.train(was_training)
        return torch.cat(chunks)

    def _held_out_real(self) -> torch.Tensor:
        """Up to ``num_eval_samples`` held-out real images (N, 1, S, S) in [0, 1], read once."""
        if self._real_eval is None:
            items = self.val_items[: self.cfg.wgan_train.num_eval_samples]
            ds = build_dataset(self.cfg, items, self.cfg.patch_size, train=False, rank=self.dist.rank)
            # indexed directly rather than through a DataLoader, whose seed draw would move the global RNG
            self._real_eval = torch.stack([ds[i]["image"] for i in range(len(ds))]) if items else torch.empty(0)
        return self._real_eval

    def _feature_extractor(self) -> FeatureExtractor:
        t = self.cfg.wgan_train
        if self._features is None:
            try:
                self._features = FeatureExtractor(
                    t.fid_feature_weights, model=t.fid_feature_model, in_channels=t.fid_in_channels,
                    input_size=t.fid_input_size, input_range=(0.0, 1.0), mean=t.fid_mean, std=t.fid_std,
                    device=self.dist.device,
                )
            except (OSError, ValueError, TypeError) as e:
                raise ConfigError(f"wgan_train.fid_feature_weights: {e}") from None
        return self._features

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The fixed-noise sample grid and sample quality against the held-out real images (rank 0 only).

        FID and KID on the features of ``fid_feature_weights`` when set; otherwise the weight-free measures:
        SSIM diversity of the samples (and of the real images, for reference), and the Wasserstein distance and
        intersection of the pixel histograms. Returns the measures (empty on other ranks).
        """
        if not self.dist.is_main:
            return {}
        t = self.cfg.wgan_train
        if self.writer is not None:
            self.writer.add_images("val/samples", self.sample(self.fixed_noise), self.global_step)
        real = self._held_out_real()
        if real.shape[0] < 2:
            return {}
        g = torch.Generator().manual_seed(self.cfg.seed + 1)  # the same evaluation noise at every validation
        fake = self.sample(torch.randn(t.num_eval_samples, self.generator.z_dim, generator=g))
        metrics: dict[str, float] = {}
        if t.fid_feature_weights is not None:
            net = self._feature_extractor()
            if "features" not in self._real_stats:
                self._real_stats["features"] = net.extract(real, t.batch_size)
            real_f, fake_f = self._real_stats["features"], net.extract(fake, t.batch_size)
            metrics["fid"] = float(fid(real_f, fake_f))
            kid_mean, kid_std = kid(real_f, fake_f, num_subsets=50, generator=torch.Generator().manual_seed(0))
            metrics["kid"], metrics["kid_std"] = float(kid_mean), float(kid_std)
        else:
            pairs = dict(max_pairs=1024, generator=torch.Generator().manual_seed(0))
            if "ssim_diversity" not in self._real_stats:
                self._real_stats["ssim_diversity"] = ssim_diversity(real, **pairs)
            metrics["ssim_diversity"] = float(ssim_diversity(fake, **pairs))
            metrics["ssim_diversity_real"] = float(self._real_stats["ssim_diversity"])
            metrics["hist_wasserstein"] = float(histogram_wasserstein(real, fake))
            metrics["hist_intersection"] = float(histogram_intersection(real, fake))
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"val/{k}", v, self.global_step)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "generator": self.generator.state_dict(),
            "critic": self.critic.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
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
        saved, now = ckpt.get("config", {}), to_dict(self.cfg)
        for key in ("generator", "critic"):
            if saved.get(key) is not None and saved[key] != now[key]:
                raise ConfigError(f"{path} was trained with a different {key} section ({saved[key]}); resume with the same architecture")
        saved_size = saved.get("wgan_train", {}).get("image_size")
        if saved_size is not None and saved_size != self.cfg.wgan_train.image_size:
            raise ConfigError(f"{path} was trained with wgan_train.image_size={saved_size}; resume with the same image size")
        if (ckpt.get("ema") is None) != (self.ema is None):
            raise ConfigError(
                f"{path} was trained with wgan_train.ema_decay {'off' if ckpt.get('ema') is None else 'on'}; "
                "resume with the same setting"
            )
        self.generator.load_state_dict(ckpt["generator"])
        self.critic.load_state_dict(ckpt["critic"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        for name in ("opt_g", "opt_d", "sched_g", "sched_d", "scaler_g", "scaler_d"):
            getattr(self, name).load_state_dict(ckpt[name])
        self.epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])

    def fit(self) -> dict[str, float]:
        """Train to ``max_epochs`` (resuming when asked); returns the last validation measures (rank 0)."""
        t = self.cfg.wgan_train
        resume = resume_path(self.cfg)
        if resume is not None:
            self.load(resume)
        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            write_run_info(self.cfg, self.dist.world_size, {"generator": self.lr_g, "discriminator": self.lr_d})
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            log.info(
                "%s training on %d images (%d held out), world size %d, effective lr G %.3g / D %.3g (x %d)%s",
                self.method, len(self.train_items), len(self.val_items), self.dist.world_size, self.lr_g, self.lr_d,
                self.dist.world_size, f", resumed from {resume} at epoch {self.epoch}" if resume else "",
            )
            if t.fid_feature_weights is None:
                log.info("FID/KID off (wgan_train.fid_feature_weights is null): logging SSIM diversity and "
                         "histogram distances to the held-out images instead")
            if len(self.val_items) < 2:
                log.warning("fewer than 2 held-out images: sample-quality measures are off, only the sample grid is logged")
        metrics: dict[str, float] = {}
        try:
            while self.epoch < t.max_epochs:
                self.train_epoch()
                self.epoch += 1
                last = self.epoch == t.max_epochs
                if self.epoch % t.val_interval == 0 or last:
                    metrics = self.validate()
                    if metrics:
                        log.info("validation after epoch %d: %s", self.epoch, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
                if self.epoch % self.cfg.checkpoint_interval == 0 or last:
                    self.save("last.pt")
        finally:
            if self.writer is not None:
                self.writer.close()
        return metrics


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return run_cli.build_arg_parser(parser, "Train a WGAN-GP or GAN on dental radiographs.",
                                    "wgan_config.json", "wgan_train.n_critic=5")


def run(args: argparse.Namespace) -> int:
    return run_cli.launch(args, WGANConfig, WGANTrainer)


def main(argv: list[str] | None = None) -> int:
    return run(build_arg_parser().parse_args(argv))


def register(subparsers) -> None:
    p = subparsers.add_parser("train-wgan", help="train a WGAN-GP or GAN (same as scripts/train_wgan.py)")
    build_arg_parser(p)
    p.set_defaults(func=run)
