"""The latent diffusion trainer: a MONAI ``DiffusionModelUNet`` in the latent space of a frozen medgen autoencoder.

What differs from the other methods:

- **latents**: every training and validation image is encoded once, whole, in tiles, by the function
  ``medgen encode`` uses (:func:`medgen.data.latents.encode_image`: read as the autoencoder was trained,
  padded to a multiple of its downsampling factor, :func:`medgen.models.tiled.tiled_encode`); the latent
  files are cached on disk under ``cache_dir`` (or ``run_dir/cache``)/``latents`` (a new autoencoder file or
  an edited image gets a new cache entry). Ranks encode their share of the images in parallel.
- **scale factor**: ``1 / std`` of all training latents (:class:`medgen.data.latents.RunningMoments` of every
  rank's share, merged), saved in the checkpoint (``latent_stats``) and logged; the UNet sees ``z * scale_factor``.
- **steps**: DDPM noise prediction (or rectified-flow velocity) on random crops of ``latent_patch_size``
  from the whole-image latents, class-conditional on edente/dente with label dropout (classifier-free
  guidance), gradient accumulation, EMA weights for samples.
- **validation**: the diffusion loss on fixed centre crops of the validation latents (fixed noise and
  timesteps), per class decoded samples at full image size from fixed noise (TensorBoard), and their
  copy-check distance to the nearest training image (``val/nearest_train_distance``) and the share of them
  `medgen check-copies` would flag (``val/copy_share``; a warning when above 0, ``ldm_train.stop_on_copies``
  stops the run). ``best.pt`` holds the state of the lowest validation loss.

The loop, checkpoints, resume, logging and launch are :class:`medgen.training.base.Trainer`'s. The
checkpoint also holds the autoencoder and its config, so ``medgen sample`` needs nothing else.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from medgen.config import ConfigError, LDMConfig, VAEConfig, to_dict
from medgen.data.latents import LatentCrops, RunningMoments, encode_image, file_stamp, latent_key, load_latent, save_latent
from medgen.data.transforms import deterministic_transforms, read_windowed
from medgen.metrics.copies import calibrate, nearest, thumbnail
from medgen.models.autoencoder import autoencoder_config, load_autoencoder
from medgen.models.tiled import tiling_for
from medgen.models.diffusion import (CLASS_INDEX, NULL_CLASS, build_unet, generate_images,
                                     latent_noise_shape, training_scheduler, training_target)
from medgen.models.tiled import tiled_encode
from medgen.training.base import Trainer, wrap_ddp
from medgen.training.checkpointer import Record
from medgen.training.distributed import all_gather_objects, all_reduce_sum
from medgen.training.images import comparison_grid

log = logging.getLogger("medgen.train")


class LatentStats:
    """What the training latents are: ``scale_factor`` (1 / std), ``mean``, ``std``, ``count`` (values),
    ``latent_shape`` (the most common whole-image latent size: samples default to it) and ``image_shape``."""

    def __init__(self) -> None:
        self.scale_factor, self.mean, self.std, self.count = 1.0, 0.0, 1.0, 0
        self.latent_shape: list[int] = []
        self.image_shape: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self).update(state)


class LDMTrainer(Trainer):
    """Trains a latent diffusion UNet from an :class:`LDMConfig` (see :class:`Trainer` for the arguments).

    Each batch is one micro-step; every ``grad_accum_steps``-th (and the last of an epoch) steps the optimiser
    and the EMA.
    """

    name = "ldm"
    method_name = "latent diffusion"
    config_cls = LDMConfig
    command_help = "train a latent diffusion model on a trained autoencoder (same as scripts/train_ldm.py)"
    example_config, example_set = "ldm_config.json", "ldm_train.latent_patch_size=[32,64]"
    # best.pt: the lowest held-out diffusion loss. On 20 public panoramics it rose again after ~1200 steps while
    # the copy check still flagged nothing: the first sign that a small training set is being memorised.
    best_metric, best_lower = "loss", True
    resume_keys = ("diffusion_def", "data_source", "ldm_train.scheduler", "ldm_train.num_train_timesteps")

    @staticmethod
    def data_patch_size(cfg: LDMConfig, vae: VAEConfig | None = None) -> tuple[int, ...]:
        """The smallest image (in pixels) a latent crop fits in: ``latent_patch_size`` x the downsampling of the
        autoencoder (``vae``: its config, read from ``autoencoder_checkpoint`` when not given)."""
        vae = vae or autoencoder_config(cfg.autoencoder_checkpoint, key="autoencoder_checkpoint")
        return tuple(p * vae.autoencoder_def.downsample_factor for p in cfg.ldm_train.latent_patch_size)

    @classmethod
    def checked_size(cls, cfg: LDMConfig) -> tuple[int, ...] | None:
        """Images are read as the autoencoder was trained: its ``patch_mode`` decides whether a size is needed."""
        vae = autoencoder_config(cfg.autoencoder_checkpoint, key="autoencoder_checkpoint")
        return None if vae.patch_mode == "resize" else cls.data_patch_size(cfg, vae)

    def build(self) -> None:
        cfg, t, dev = self.cfg, self.cfg.ldm_train, self.dist.device
        self.vae_cfg = autoencoder_config(cfg.autoencoder_checkpoint, key="autoencoder_checkpoint")
        if self.vae_cfg.spatial_dims != cfg.spatial_dims:
            raise ConfigError(f"autoencoder_checkpoint={cfg.autoencoder_checkpoint} is a {self.vae_cfg.spatial_dims}D model "
                              f"but spatial_dims={cfg.spatial_dims}; use an autoencoder of the same dimensions")
        # images are read as the autoencoder saw them in training
        for key in ("intensity_percentiles", "patch_mode"):
            if getattr(cfg, key) != getattr(self.vae_cfg, key) and self.dist.is_main:
                log.info("%s=%s taken from the autoencoder's training (this config says %s)", key,
                         getattr(self.vae_cfg, key), getattr(cfg, key))
            setattr(cfg, key, getattr(self.vae_cfg, key))
        ae_def = self.vae_cfg.autoencoder_def
        self.factor = ae_def.downsample_factor
        if cfg.patch_mode == "resize":
            latent = [p // self.factor for p in self.vae_cfg.autoencoder_train.patch_size]
            if any(c > s for c, s in zip(t.latent_patch_size, latent)):
                raise ConfigError(f"ldm_train.latent_patch_size={list(t.latent_patch_size)} is larger than the latents "
                                  f"{latent} of the autoencoder's resized images; use at most {latent}")
        self.autoencoder = load_autoencoder(cfg.autoencoder_checkpoint, ae_def, map_location=dev).requires_grad_(False)
        self.tiling = tiling_for(self.vae_cfg)
        self.unet = build_unet(cfg.diffusion_def, cfg.spatial_dims, ae_def.latent_channels, cfg.conditional).to(dev)
        self.noise_scheduler = training_scheduler(t.scheduler, t.num_train_timesteps)
        self.stats = LatentStats()
        self.track(unet=self.unet, latent_stats=self.stats, autoencoder=self.autoencoder,
                   autoencoder_config=Record(to_dict(self.vae_cfg)))
        self.opt, _, self.scaler = self.build_optimizer("unet", self.unet, t.lr)
        self.build_ema(self.unet, t.ema_decay)
        self.unet_ddp = wrap_ddp(self.unet, self.dist)
        self._train_thumbnails: torch.Tensor | None = None

    def compiled_networks(self) -> list[torch.nn.Module]:
        return [self.unet]

    # ------------------------------------------------------------------ latents
    def set_data(self, train_items: Sequence[dict], val_items: Sequence[dict]) -> None:
        """Encode (or find in the cache) every image's latent, compute the scale factor, build the crops."""
        self.train_items, self.val_items = list(train_items), list(val_items)
        self.train_latents = self._encode(self.train_items)
        self.val_latents = self._encode(self.val_items)
        self._latent_stats()
        small = [(it["image"], tuple(s)) for it, s in zip(self.train_items, self._shapes) if
                 any(c > n for c, n in zip(self.cfg.ldm_train.latent_patch_size, s))]
        if small:
            raise ConfigError(f"{small[0][0]} encodes to a latent of {list(small[0][1])}, smaller than "
                              f"ldm_train.latent_patch_size={list(self.cfg.ldm_train.latent_patch_size)}; lower it to at most "
                              f"{[min(s[i] for _, s in small) for i in range(self.cfg.spatial_dims)]}")
        labels = [CLASS_INDEX.get(it.get("label"), 0) for it in self.train_items]
        self.train_ds = LatentCrops(self.train_latents, labels, self.cfg.ldm_train.latent_patch_size, self.cfg.seed,
                                    repeats=self.cfg.patches_per_image)

    def _cache_settings(self) -> dict:
        v = self.vae_cfg
        return {"autoencoder": file_stamp(self.cfg.autoencoder_checkpoint), "percentiles": list(v.intensity_percentiles),
                "patch_mode": v.patch_mode, "patch_size": list(v.autoencoder_train.patch_size),
                "tile": list(self.tiling.tile), "overlap": list(self.tiling.overlap), "norm": self.tiling.norm}

    def _encode(self, items: list[dict]) -> list[Path]:
        """The latent file of every item; this rank encodes the missing ones of its share, then all ranks wait."""
        root = Path(self.cfg.cache_dir or Path(self.cfg.run_dir) / "cache") / "latents"
        settings = self._cache_settings()
        paths = [root / f"{latent_key(it['image'], settings)}.pt" for it in items]
        mine = [i for i in range(self.dist.rank, len(items), self.dist.world_size) if not paths[i].is_file()]
        if mine and self.dist.is_main:
            log.info("encoding %d of %d images into latents (cached in %s)", len(mine) * self.dist.world_size, len(items), root)
        chain = deterministic_transforms(self.vae_cfg, self.vae_cfg.autoencoder_train.patch_size)
        encoder = functools.partial(tiled_encode, self.autoencoder)
        for i in mine:
            save_latent(encode_image(self.vae_cfg, items[i]["image"], encoder, self.tiling, chain), paths[i])
        all_reduce_sum(torch.zeros(1, device=self.dist.device))  # every file is written before anyone reads
        return paths

    def _latent_stats(self) -> None:
        """Scale factor = 1 / std of every training latent value, from the moments of every rank's share."""
        moments, mine = RunningMoments(), []
        for path in self.train_latents[self.dist.rank::self.dist.world_size]:
            z = load_latent(path)["z_mu"]
            moments.add(z)
            mine.append(list(z.shape[1:]))
        gathered = all_gather_objects((moments, mine))
        moments = RunningMoments()
        for part, _ in gathered:
            moments.merge(part)
        self._shapes = [gathered[i % self.dist.world_size][1][i // self.dist.world_size] for i in range(len(self.train_latents))]
        shape = list(Counter(tuple(s) for s in self._shapes).most_common(1)[0][0])
        std = moments.std
        self.stats.load_state_dict({"scale_factor": 1.0 / std if std > 0 else 1.0, "mean": moments.mean, "std": std,
                                    "count": moments.n, "latent_shape": shape, "image_shape": [v * self.factor for v in shape]})

    def on_train_start(self) -> None:
        s = self.stats
        log.info("latents: scale_factor %.6g (1/std over %d values of %d training images), sample size %s (latent %s)",
                 s.scale_factor, s.count, len(self.train_items), s.image_shape, s.latent_shape)
        if self.writer is not None:
            self.writer.add_scalar("latent/scale_factor", s.scale_factor, self.global_step)

    # ------------------------------------------------------------------ steps
    def batch_extras(self, batch: dict) -> tuple:
        return (batch["label"].to(self.dist.device),)

    def diffusion_loss(self, model: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None,
                       noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """MSE between the model's prediction on the noised scaled latents and its target (noise or velocity)."""
        x0 = z * self.stats.scale_factor
        noisy = self.noise_scheduler.add_noise(original_samples=x0, noise=noise, timesteps=timesteps)
        with self.precision.autocast():
            pred = self.graphs(model, noisy, timesteps=timesteps, class_labels=labels)
        return F.mse_loss(pred.float(), training_target(self.cfg.ldm_train.scheduler, x0, noise))

    def _timesteps(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        t = self.cfg.ldm_train
        if t.scheduler == "rflow" and generator is None:
            return self.noise_scheduler.sample_timesteps(x)
        if generator is None:  # drawn where they are used: a copy to the GPU would wait for its queue
            return torch.randint(0, t.num_train_timesteps, (x.shape[0],), device=x.device)
        return torch.randint(0, t.num_train_timesteps, (x.shape[0],), generator=generator).to(x.device)

    def train_step(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One micro-step on latent crops (unscaled ``z_mu``) and their class indices."""
        t = self.cfg.ldm_train
        class_labels = None
        if self.cfg.conditional and labels is not None:
            drop = torch.rand(labels.shape[0], device=labels.device) < t.label_dropout
            class_labels = torch.where(drop, torch.full_like(labels, NULL_CLASS), labels)
        noise = torch.randn_like(latents)
        timesteps = self._timesteps(latents)
        with self.accumulating(self.unet_ddp):
            loss = self.diffusion_loss(self.unet_ddp, latents, class_labels, noise, timesteps)
            self.optimizer_step(loss, self.opt, self.scaler, self.unet, t.grad_clip)
        return {"diffusion": loss.detach()}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Diffusion loss on centre crops of the validation latents (fixed noise and timesteps per image, all
        ranks) and, on rank 0, decoded samples per class at full image size from fixed noise."""
        model = self.sampling_network.eval()
        crop = self.cfg.ldm_train.latent_patch_size
        sums = torch.zeros(2, dtype=torch.float64, device=self.dist.device)
        for i in range(self.dist.rank, len(self.val_latents), self.dist.world_size):
            z = load_latent(self.val_latents[i])["z_mu"]
            if any(c > s for c, s in zip(crop, z.shape[1:])):
                continue
            box = tuple(slice((s - c) // 2, (s - c) // 2 + c) for s, c in zip(z.shape[1:], crop))
            z = z[(slice(None), *box)][None].float().to(self.dist.device)
            g = torch.Generator().manual_seed(self.cfg.seed + i)
            noise = torch.randn(z.shape, generator=g).to(z.device)
            timesteps = self._timesteps(z, g)
            label = torch.tensor([CLASS_INDEX.get(self.val_items[i].get("label"), 0)], device=z.device) if self.cfg.conditional else None
            sums += torch.tensor([self.diffusion_loss(model, z, label, noise, timesteps).item(), 1.0], dtype=torch.float64,
                                 device=sums.device)
        all_reduce_sum(sums)
        metrics = {"loss": sums[0].item() / sums[1].item()} if sums[1] > 0 else {}
        if self.dist.is_main and self.writer is not None:
            samples = self.samples()
            for name, images in samples.items():
                self.writer.add_image(f"val/samples_{name}", comparison_grid([images]), self.global_step)
            metrics.update(self.copy_check(torch.cat(list(samples.values()))))
            if metrics["copy_share"] > 0:
                log.warning("validation after epoch %d: %.0f%% of the samples are copies of training images (check-copies' "
                            "rule, nearest distance %.3g); see `medgen check-copies` and docs on memorisation%s",
                            self.epoch, 100 * metrics["copy_share"], metrics["nearest_train_distance"],
                            "" if self.cfg.ldm_train.stop_on_copies else "; ldm_train.stop_on_copies=true stops the run here")
        self.unet.train()
        return metrics

    def copy_check(self, images: torch.Tensor) -> dict[str, float]:
        """``nearest_train_distance``: the smallest copy-check distance (:mod:`medgen.metrics.copies`) of ``images``
        to any training image (near 0: the model reproduces one); ``copy_share``: the share of ``images`` that
        `medgen check-copies` would flag, its threshold calibrated once on (up to 256 of) the training images."""
        if self._train_thumbnails is None:  # read once, at the first validation
            train = [read_windowed(it["image"], self.cfg.intensity_percentiles) for it in self.train_items]
            self._train_thumbnails = torch.stack([thumbnail(x) for x in train])
            self._copy_threshold = calibrate(self._train_thumbnails, images=train[:256])["threshold"] if len(train) > 1 else 0.0
        dist = nearest(list(images), self._train_thumbnails)[0]
        return {"nearest_train_distance": dist.min().item(), "copy_share": (dist < self._copy_threshold).float().mean().item()}

    def stop_reason(self, metrics: dict[str, float]) -> str | None:
        if self.cfg.ldm_train.stop_on_copies and metrics.get("copy_share", 0) > 0:
            return (f"stopping after epoch {self.epoch} (ldm_train.stop_on_copies=true): {100 * metrics['copy_share']:.0f}% "
                    "of the validation samples copy training images; last.pt holds this state")
        return None

    def samples(self, count: int | None = None) -> dict[str, torch.Tensor]:
        """``count`` (default ``num_val_images``) decoded samples per class (``"all"``: unconditional) in [0, 1]
        at the training images' size, from fixed noise, with the validation sampler and guidance."""
        t, count = self.cfg.ldm_train, count or self.cfg.num_val_images
        shape = latent_noise_shape(self.stats.image_shape, self.factor, self.cfg.diffusion_def.downsample_factor)
        g = torch.Generator().manual_seed(self.cfg.seed)
        noise = torch.randn((count, self.vae_cfg.autoencoder_def.latent_channels, *shape), generator=g).to(self.dist.device)
        sampler = "ddim" if t.scheduler == "ddpm" else "rflow"
        out = {}
        for name in self.cfg.classes if self.cfg.conditional else ("all",):
            labels = [CLASS_INDEX[name]] * count if self.cfg.conditional else None
            out[name] = generate_images(self.sampling_network.eval(), self.autoencoder, self.tiling, self.stats.scale_factor,
                                        noise, self.stats.image_shape, t.scheduler, sampler, t.num_train_timesteps,
                                        t.num_inference_steps, labels, t.guidance_scale,
                                        torch.Generator().manual_seed(self.cfg.seed), self.precision.autocast)
        return out
