"""The latent diffusion config (``ldm_config.json``): every key with its default and meaning.

A latent diffusion model is trained in the latent space of a trained medgen autoencoder
(``autoencoder_checkpoint``, frozen): the images are read and windowed as that autoencoder was trained
(its ``intensity_percentiles``, ``patch_mode`` and ``patch_size``), encoded once in tiles, and a MONAI
``DiffusionModelUNet`` (``diffusion_def``) learns to denoise random crops of ``ldm_train.latent_patch_size``
of the whole-image latents. The paths, data and run keys are :class:`RunConfig`'s, as for the VAE.
Defaults follow MONAI's latent diffusion tutorials (scaled-linear betas 0.0015..0.0195, 1000 steps, lr 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medgen.config.core import ConfigError, check_optimiser
from medgen.config.run import RunConfig


@dataclass
class DiffusionDef:
    channels: tuple[int, ...] = (128, 256, 256)  # channels per UNet level; len-1 downsamplings by 2
    attention_levels: tuple[bool, ...] = (False, True, True)  # self-attention per level
    num_res_blocks: int = 2  # residual blocks per level
    num_head_channels: int = 32  # channels per attention head; must divide the channels of attention levels
    norm_num_groups: int = 32  # GroupNorm groups; must divide every channel count
    class_conditional: bool = True  # condition on edente/dente (data_source=both); unconditional for one class

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def validate(self, prefix: str = "diffusion_def.") -> None:
        if not self.channels or any(c < 1 for c in self.channels):
            raise ConfigError(f"{prefix}channels={list(self.channels)} must be a non-empty list of positive integers")
        for name in ("num_res_blocks", "num_head_channels", "norm_num_groups"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}{name}={getattr(self, name)} must be at least 1")
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(f"{prefix}norm_num_groups={self.norm_num_groups} does not divide channel count {bad[0]} of "
                              f"{prefix}channels={list(self.channels)}; use a common divisor")
        if len(self.attention_levels) != len(self.channels):
            raise ConfigError(f"{prefix}attention_levels has {len(self.attention_levels)} entries but {prefix}channels has "
                              f"{len(self.channels)}; give one true/false per level")
        bad = [c for c, a in zip(self.channels, self.attention_levels) if a and c % self.num_head_channels]
        if bad:
            raise ConfigError(f"{prefix}num_head_channels={self.num_head_channels} does not divide {bad[0]}, the channels of "
                              "an attention level; use a divisor of it")


@dataclass
class LDMTrain:
    batch_size: int = 8  # latent crops per process (per GPU) and step
    latent_patch_size: tuple[int, ...] = (64, 64)  # latent crop per spatial dim (non-square allowed, e.g. [64, 128])
    max_epochs: int = 200
    val_interval: int = 10  # validation loss and decoded samples every N epochs
    lr: float = 1e-4  # per-process LR; the effective LR is lr x world_size
    betas: tuple[float, ...] = (0.9, 0.999)  # Adam betas
    lr_scheduler: Literal["constant", "cosine"] = "constant"  # cosine decays to 0 over max_epochs
    grad_clip: float | None = 1.0  # max gradient norm (null: off)
    grad_accum_steps: int = 1  # batches whose gradients are summed before each optimiser step
    num_train_timesteps: int = 1000
    scheduler: Literal["ddpm", "rflow"] = "ddpm"  # ddpm: predict the noise (sample with ddpm/ddim); rflow: velocity
    num_inference_steps: int = 50  # sampling steps of the validation samples (ddim for ddpm training)
    guidance_scale: float = 3.0  # classifier-free guidance of the validation samples (0: unconditional, 1: plain conditional)
    label_dropout: float = 0.1  # fraction of training labels replaced by "no class" (classifier-free guidance)
    ema_decay: float | None = 0.999  # EMA of the UNet weights, used for samples; null: off
    # stop the run after a validation whose samples include a copy of a training image (check-copies' rule;
    # val/copy_share > 0), keeping that validation's last.pt; false: warn and go on
    stop_on_copies: bool = False

    def validate(self, spatial_dims: int, unet: DiffusionDef, prefix: str = "ldm_train.") -> None:
        for name in ("batch_size", "max_epochs", "val_interval", "grad_accum_steps", "num_train_timesteps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}{name}={getattr(self, name)} must be at least 1")
        if self.lr <= 0:
            raise ConfigError(f"{prefix}lr={self.lr} must be positive, e.g. 1e-4")
        if len(self.latent_patch_size) != spatial_dims:
            raise ConfigError(f"{prefix}latent_patch_size={list(self.latent_patch_size)} has {len(self.latent_patch_size)} "
                              f"entries but spatial_dims={spatial_dims}; give one size per spatial dimension")
        f = unet.downsample_factor
        bad = [p for p in self.latent_patch_size if p % f or p < f]
        if bad:
            fixed = [max(f, round(p / f) * f) for p in self.latent_patch_size]
            raise ConfigError(f"{prefix}latent_patch_size={list(self.latent_patch_size)}: {bad[0]} is not divisible by {f}, "
                              f"the downsampling of diffusion_def.channels={list(unet.channels)}; use e.g. {fixed}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ConfigError(f"{prefix}num_inference_steps={self.num_inference_steps} must be between 1 and "
                              f"num_train_timesteps={self.num_train_timesteps}")
        if self.guidance_scale < 0:
            raise ConfigError(f"{prefix}guidance_scale={self.guidance_scale} must not be negative (0: unconditional)")
        if not 0 <= self.label_dropout < 1:
            raise ConfigError(f"{prefix}label_dropout={self.label_dropout} must be in [0, 1), e.g. 0.1")
        check_optimiser(self, prefix, "[0.9, 0.999]")


@dataclass
class LDMConfig(RunConfig):
    section = "ldm_train"
    title = "latent diffusion"
    marker_keys = ("diffusion_def", "autoencoder_checkpoint")

    run_dir: str = "runs/ldm"
    data_source: Literal["edente", "dente", "both"] = "both"  # both: class-conditional on edente / dente
    autoencoder_checkpoint: str = "runs/vae/checkpoints/best.pt"  # trained medgen autoencoder (frozen; its config says how images are read)
    diffusion_def: DiffusionDef = field(default_factory=DiffusionDef)
    ldm_train: LDMTrain = field(default_factory=LDMTrain)

    def validate(self) -> None:
        super().validate()
        self.diffusion_def.validate()
        self.ldm_train.validate(self.spatial_dims, self.diffusion_def)

    @property
    def conditional(self) -> bool:
        """Class-conditional (edente / dente, with classifier-free guidance): both classes and class_conditional."""
        return self.diffusion_def.class_conditional and len(self.classes) > 1


__all__ = ["DiffusionDef", "LDMConfig", "LDMTrain"]
