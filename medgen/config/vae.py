"""The VAE config (``vae_config.json``): every key with its default and meaning.

Keys and defaults of the paths, data, ``autoencoder_def`` and ``autoencoder_train`` sections follow
medgen's VAE config specification; the remaining keys are what the trainer needs besides. The keys every
trainer shares (paths, data, run settings) are :class:`medgen.config.run.RunConfig`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medgen.config.core import ConfigError, check_optimiser
from medgen.config.run import RunConfig


@dataclass
class AutoencoderDef:
    spatial_dims: Literal[2, 3] = 2  # must match the top-level spatial_dims
    in_channels: int = 1
    out_channels: int = 1
    latent_channels: int = 4  # more: less compression, better detail
    channels: tuple[int, ...] = (64, 128, 256)  # channels per level; len-1 downsamplings by 2
    num_res_blocks: int = 2  # residual blocks per level
    # GroupNorm groups; must divide every channel count. Each group is normalised by the statistics of the image it
    # sees, so with one or two channels a group the network loses the absolute intensity and infers it from the
    # patch's context: trained on patches and run on whole images its output came out 0.1 too dark or too bright
    # (about 18 dB whole-image PSNR on real panoramics); with 1 group the same run reached 30 dB
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    attention_levels: tuple[bool, ...] = (False, False, False)  # self-attention per level
    with_encoder_nonlocal_attn: bool = True  # attention in the encoder bottleneck
    with_decoder_nonlocal_attn: bool = True  # attention in the decoder bottleneck

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def validate(self, prefix: str = "autoencoder_def.") -> None:
        for name in ("in_channels", "out_channels", "latent_channels", "num_res_blocks", "norm_num_groups"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}{name}={getattr(self, name)} must be at least 1")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ConfigError(f"{prefix}channels={list(self.channels)} must be a non-empty list of positive integers")
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            divisors = [g for g in (32, 64, 48, 24, 16, 8, 4, 2, 1) if all(c % g == 0 for c in self.channels)]
            raise ConfigError(
                f"{prefix}norm_num_groups={self.norm_num_groups} does not divide channel count {bad[0]} of "
                f"{prefix}channels={list(self.channels)}; use a common divisor such as {divisors[0]}"
            )
        if len(self.attention_levels) != len(self.channels):
            raise ConfigError(
                f"{prefix}attention_levels has {len(self.attention_levels)} entries but {prefix}channels has "
                f"{len(self.channels)}; give one true/false per level"
            )


@dataclass
class DiscriminatorDef:
    channels: int = 64  # channels of the first PatchGAN layer (doubled per layer)
    num_layers_d: int = 3  # strided layers; the receptive field grows with each
    norm: Literal["INSTANCE", "BATCH", "GROUP"] = "INSTANCE"  # INSTANCE is DDP-safe; BATCH becomes SyncBatchNorm under DDP
    kernel_size: int = 4


@dataclass
class AutoencoderTrain:
    batch_size: int = 8  # per process (per GPU)
    patch_size: tuple[int, ...] = (256, 256)  # one entry per spatial dim, divisible by the model's downsampling
    max_epochs: int = 100
    val_interval: int = 1  # validate every N epochs
    lr: float = 2.5e-5  # per-process LR; the effective LR is lr x world_size
    perceptual_weight: float = 1.0  # 0 disables the perceptual loss
    kl_weight: float = 1e-6
    recon_loss: Literal["l1", "l2"] = "l1"
    adv_weight: float = 0.01  # weight of the patch-adversarial term in the generator loss
    adv_warmup_epochs: int = 5  # epochs trained without the adversarial terms (discriminator idle)
    disc_lr: float | None = None  # discriminator LR before world-size scaling (null: same as lr)
    betas: tuple[float, ...] = (0.5, 0.9)  # Adam betas for both networks
    weight_decay: float = 0.0
    # cosine: per epoch to 0 over max_epochs; warmup_cosine: per step, a linear rise over lr_warmup_steps then a
    # cosine to 0 at the run's end (max_epochs or max_time, whichever comes first)
    lr_scheduler: Literal["constant", "cosine", "warmup_cosine"] = "constant"
    lr_warmup_steps: int = 0  # warmup_cosine: steps of the linear rise
    grad_clip: float | None = None  # max gradient norm for both networks (null: off)
    perceptual_network: str = "radimagenet_resnet50"  # MONAI PerceptualLoss network_type (`medgen weights list`)
    perceptual_weights: str | None = None  # resnet50 only: a weights file instead of the weights directory's
    perceptual_cache_dir: str | None = None  # a torch hub directory instead of the weights directory's ($MEDGEN_HOME/hub)
    fake_3d_ratio: float = 0.5  # fraction of slices used by the 2.5D perceptual loss on volumes

    def validate(self, spatial_dims: int, ae: AutoencoderDef, prefix: str = "autoencoder_train.") -> None:
        if self.lr_warmup_steps < 0:
            raise ConfigError(f"{prefix}lr_warmup_steps={self.lr_warmup_steps} must be 0 or more")
        for name in ("batch_size", "max_epochs", "val_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}{name}={getattr(self, name)} must be at least 1")
        for name in ("lr", "kl_weight", "perceptual_weight", "adv_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{prefix}{name}={getattr(self, name)} must not be negative")
        if self.lr == 0:
            raise ConfigError(f"{prefix}lr=0 would not train; typical values are 1e-5 to 5e-5")
        if len(self.patch_size) != spatial_dims:
            raise ConfigError(
                f"{prefix}patch_size={list(self.patch_size)} has {len(self.patch_size)} entries but spatial_dims={spatial_dims}; "
                f"give one size per spatial dimension, e.g. {[self.patch_size[0]] * spatial_dims}"
            )
        f = ae.downsample_factor
        bad = [p for p in self.patch_size if p % f or p < f]
        if bad:
            fixed = [max(f, round(p / f) * f) for p in self.patch_size]
            raise ConfigError(
                f"{prefix}patch_size={list(self.patch_size)}: {bad[0]} is not divisible by {f}, the downsampling of "
                f"autoencoder_def.channels={list(ae.channels)}; use e.g. {fixed}"
            )
        check_optimiser(self, prefix, "[0.5, 0.9]")


@dataclass
class VAEConfig(RunConfig):
    section = "autoencoder_train"
    title = "VAE"
    marker_keys = ("autoencoder_def", "discriminator_def")

    # also validate on the whole validation images, tiled as `medgen reconstruct` runs them (val/full_psnr, val/full_ssim)
    val_full_images: bool = False
    autoencoder_def: AutoencoderDef = field(default_factory=AutoencoderDef)
    discriminator_def: DiscriminatorDef = field(default_factory=DiscriminatorDef)
    autoencoder_train: AutoencoderTrain = field(default_factory=AutoencoderTrain)

    def validate(self) -> None:
        super().validate()
        if self.autoencoder_def.spatial_dims != self.spatial_dims:
            raise ConfigError(
                f"autoencoder_def.spatial_dims={self.autoencoder_def.spatial_dims} disagrees with spatial_dims={self.spatial_dims}; "
                "set both to 2 (radiographs) or both to 3 (volumes)"
            )
        self.autoencoder_def.validate()
        self.autoencoder_train.validate(self.spatial_dims, self.autoencoder_def)


__all__ = [
    "AutoencoderDef",
    "AutoencoderTrain",
    "DiscriminatorDef",
    "VAEConfig",
]
