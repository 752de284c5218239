"""The adversarial trainers: WGAN-GP and GAN with BCE / hinge / least-squares losses.

One class, :class:`WGANTrainer`, runs both (``wgan_train.method``): they share the networks, the data, the
``n_critic`` schedule, optimisers and EMA, and differ only in the two loss functions. The loop, checkpoints,
resume, logging and launch are :class:`medgen.training.base.Trainer`'s.

Real images come from the shared transform chain in [0, 1] and are mapped to the generator's Tanh range
[-1, 1] here (``x -> 2x - 1``); generated images are mapped back for metrics, grids and files.
"""

from __future__ import annotations

import logging

import torch

from medgen.config import ConfigError
from medgen.config.wgan import WGANConfig
from medgen.data.datasets import build_dataset
from medgen.losses.adversarial import (
    feature_matching_loss,
    gan_d_loss,
    gan_g_loss,
    gradient_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)
from medgen.metrics import FeatureExtractor, feature_network_problem, fid, histogram_intersection, histogram_wasserstein, kid, ssim_diversity
from medgen.models.wgan import build_critic, build_generator, to_unit_range
from medgen.training.base import Trainer, wrap_ddp

log = logging.getLogger("medgen.train")

# Logged terms of one critic step and one generator step, per method: name -> TensorBoard tag.
CRITIC_TERMS = {
    "wgan_gp": {"critic": "loss/critic", "wasserstein": "wgan/wasserstein", "gp": "loss/gp", "grad_norm": "wgan/grad_norm"},
    "gan": {"discriminator": "loss/discriminator", "real_logit": "gan/real_logit", "fake_logit": "gan/fake_logit"},
}
GENERATOR_TERMS = {"generator": "loss/generator", "generator_adv": "loss/generator_adv", "feature_matching": "loss/feature_matching"}


class WGANTrainer(Trainer):
    """Trains a generator against a critic from a :class:`WGANConfig` (``wgan_gp`` or ``gan``).

    Each real batch is one critic step; every ``n_critic``-th critic step is followed by one generator step.

    - ``wgan_gp``: critic loss ``-E[D(real)] + E[D(fake)] + lambda_gp * GP`` (the GP on per-sample random
      interpolates, computed outside autocast because fp16 input gradients underflow), generator loss
      ``-E[D(G(z))]``.
    - ``gan``: ``gan_loss`` (bce with logits, hinge or least squares) for both networks, plus
      ``feature_matching_weight`` x feature matching on the critic's penultimate features for the generator.

    Arguments as for :class:`~medgen.training.base.Trainer`; the validation items are the held-out real images
    the samples are compared with.
    """

    name = "wgan"
    config_cls = WGANConfig
    command_help = "train a WGAN-GP or GAN (same as scripts/train_wgan.py)"
    example_config, example_set = "wgan_config.json", "wgan_train.n_critic=5"
    resume_keys = ("generator", "critic", "wgan_train.image_size")
    no_cuda_graphs = "the WGAN/GAN steps run eagerly (the gradient penalty differentiates through a backward pass)"

    @staticmethod
    def data_patch_size(cfg: WGANConfig) -> tuple[int, ...]:
        return tuple(cfg.patch_size)

    @classmethod
    def pretrained_networks(cls, cfg: WGANConfig) -> list[tuple[str, str | None]]:
        features = cfg.wgan_train.fid_feature_weights
        return [(f"FID/KID feature network {features}", feature_network_problem(features))] if features else []

    def build(self) -> None:
        cfg, t, dev = self.cfg, self.cfg.wgan_train, self.dist.device
        self.method = self.method_name = t.method
        # the feature network loads at the first validation; whether it is on this machine is known now
        problem = t.fid_feature_weights and feature_network_problem(t.fid_feature_weights)
        if problem:
            raise ConfigError(f"wgan_train.fid_feature_weights={t.fid_feature_weights}: {problem}")
        # a decoder backbone's keys are checked here, by its config (ConfigError naming generator.backbone.KEY)
        self.generator = build_generator(cfg.generator.network_section(), t.image_size).to(dev)
        self.critic = build_critic(cfg.critic.network_section(), t.image_size).to(dev)
        self.track(generator=self.generator, critic=self.critic)
        # only trainable parameters: a ProgressiveDecoder backbone's own latent is frozen
        self.opt_g, _, self.scaler_g = self.build_optimizer("generator", self.generator, t.lr_generator, "_g")
        self.opt_d, _, self.scaler_d = self.build_optimizer("discriminator", self.critic, t.lr_discriminator, "_d")
        self.build_ema(self.generator, t.ema_decay)
        self.counters["generator_steps"] = 0

        self.g_ddp = wrap_ddp(self.generator, self.dist)
        # The gradient penalty's double backward goes through this wrapper, so its parameter gradients are
        # averaged across ranks with the rest of the critic loss.
        self.d_ddp = wrap_ddp(self.critic, self.dist)
        # Validation noise from its own generator: sampling never moves the training random streams.
        self.fixed_noise = torch.randn(cfg.num_val_images, self.generator.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
        self._real_eval: torch.Tensor | None = None  # held-out real images in [0, 1], loaded at first validation
        self._real_stats: dict[str, torch.Tensor] = {}
        self._features: FeatureExtractor | None = None

    def compiled_networks(self) -> list[torch.nn.Module]:
        # compiled graphs have no double backward, which the gradient penalty takes through the critic
        return [self.generator] + ([self.critic] if self.method == "gan" else [])

    def critic_terms(self) -> dict[str, str]:
        return CRITIC_TERMS[self.method]

    def scalar_tag(self, name: str) -> str:
        return {**self.critic_terms(), **GENERATOR_TERMS}[name]

    def train_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One critic step on a real batch in [0, 1]; every ``n_critic``-th step also one generator step."""
        real = images * 2.0 - 1.0
        terms = self.critic_step(real)
        if (self.global_step + 1) % self.cfg.wgan_train.n_critic == 0:
            terms.update(self.generator_step(real))
        return terms

    def on_epoch_end(self, means: dict[str, float]) -> None:
        if "generator" not in means and self.dist.is_main:  # fewer batches so far than n_critic
            t = self.cfg.wgan_train
            log.warning(
                "epoch %d made no generator step (%d generator steps so far): an epoch has fewer batches than "
                "wgan_train.n_critic=%d; lower n_critic or wgan_train.batch_size=%d, or add training images",
                self.epoch + 1, self.counters["generator_steps"], t.n_critic, t.batch_size,
            )

    def on_train_start(self) -> None:
        if self.cfg.wgan_train.fid_feature_weights is None:
            log.info("FID/KID off (wgan_train.fid_feature_weights is null): logging SSIM diversity and "
                     "histogram distances to the held-out images instead")
        if len(self.val_items) < 2:
            log.warning("fewer than 2 held-out images: sample-quality measures are off, only the sample grid is logged")

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
        self.optimizer_step(loss, self.opt_d, self.scaler_d, self.critic, t.grad_clip)
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
            self.optimizer_step(loss, self.opt_g, self.scaler_g, self.generator, t.grad_clip)
        finally:
            self.critic.requires_grad_(True)
        self.counters["generator_steps"] += 1
        return dict(generator=loss.detach(), generator_adv=l_adv.detach(), feature_matching=l_fm.detach())

    # ------------------------------------------------------------------ validation (rank 0)
    @torch.no_grad()
    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (N, 1, S, S) from ``noise`` (N, z_dim) with :attr:`sampling_network` in eval mode,
        ``batch_size`` at a time."""
        gen, dev = self.sampling_network, self.dist.device
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
        return metrics
