"""The WGAN-GP / GAN config (``wgan_config.json``): every key with its default and meaning.

The shared paths, data and run keys (and their validation) come from :class:`RunConfig`, as for the VAE.
Section names and keys follow the WGAN-GP design's own names: ``generator`` (``z_dim``, ``g_channels``, ...), ``critic``
(``d_channels``, ...) and ``wgan_train`` (``image_size``, ``n_critic``, ``lambda_gp``, ``lr_generator``, ...).
Defaults: the WGAN-GP recipe (Adam(0, 0.9), lr 2e-4 for both networks, lambda 10, z_dim 100) and what GAN
training on radiographs taught (balanced learning rates, a small feature-matching weight of 0.01).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medgen.config.core import ConfigError, check_optimiser
from medgen.config.run import RunConfig

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 64, 256


def attention_resolutions(image_size: int) -> list[int]:
    """Feature-map resolutions where both networks can take self-attention: 4, 8, ..., image_size // 2."""
    return [4 * 2**i for i in range(int(math.log2(image_size // 4)))]


def _check_attention(values: tuple[int, ...], image_size: int, key: str) -> None:
    allowed = attention_resolutions(image_size)
    bad = [r for r in values if r not in allowed]
    if bad:
        raise ConfigError(
            f"{key}={list(values)}: resolution {bad[0]} does not exist in the network for "
            f"wgan_train.image_size={image_size}; choose from {allowed}"
        )


@dataclass
class GeneratorDef:
    type: Literal["dcgan", "conv_decoder", "progressive_decoder"] = "dcgan"  # network; see backbone for the decoders
    z_dim: int = 100  # latent (noise) length
    g_channels: int = 512  # dcgan: channels of the first 4x4 map, halved by each upsampling block
    min_channels: int = 32  # dcgan: floor of the halving channel count
    self_attention_resolutions: tuple[int, ...] = ()  # dcgan: SAGAN attention after these map sizes, e.g. [16, 32]
    # conv_decoder / progressive_decoder: that decoder's config keys (e.g. {"hidden_dims": [256, 128, 64, 32]});
    # z_dim, the output size (= wgan_train.image_size) and a tanh output are filled in.
    backbone: Any = field(default_factory=dict)

    def validate(self, image_size: int, prefix: str = "generator.") -> None:
        for name in ("z_dim", "g_channels", "min_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}{name}={getattr(self, name)} must be at least 1")
        if not isinstance(self.backbone, dict):
            raise ConfigError(f"{prefix}backbone must be an object (decoder config keys), got {self.backbone!r}")
        if self.type == "dcgan" and self.backbone:
            raise ConfigError(
                f"{prefix}backbone is only used with {prefix}type conv_decoder or progressive_decoder; "
                f"remove it or set {prefix}type"
            )
        _check_attention(self.self_attention_resolutions, image_size, f"{prefix}self_attention_resolutions")

    def network_section(self) -> dict[str, Any]:
        """The plain dict :func:`medgen.models.wgan.build_generator` takes."""
        if self.type == "dcgan":
            return {
                "type": "dcgan", "z_dim": self.z_dim, "g_channels": self.g_channels,
                "min_channels": self.min_channels, "self_attention_resolutions": list(self.self_attention_resolutions),
            }  # fmt: skip
        return {"type": self.type, "z_dim": self.z_dim, **self.backbone}


@dataclass
class CriticDef:
    d_channels: int = 64  # channels of the first strided conv, doubled per block up to max_channels
    max_channels: int | None = None  # cap of the doubling (null: 8 x d_channels, i.e. 512 by default)
    norm: Literal["instance", "none"] = "instance"  # InstanceNorm(affine); never BatchNorm (breaks the per-sample GP)
    spectral_norm: bool = False  # spectral normalisation on every conv (largest singular value ~1)
    self_attention_resolutions: tuple[int, ...] = ()  # SAGAN attention after these map sizes, e.g. [16]

    def validate(self, image_size: int, prefix: str = "critic.") -> None:
        if self.d_channels < 1:
            raise ConfigError(f"{prefix}d_channels={self.d_channels} must be at least 1")
        if self.max_channels is not None and self.max_channels < self.d_channels:
            raise ConfigError(
                f"{prefix}max_channels={self.max_channels} is below {prefix}d_channels={self.d_channels}; "
                "raise it or set it to null"
            )
        _check_attention(self.self_attention_resolutions, image_size, f"{prefix}self_attention_resolutions")

    def network_section(self) -> dict[str, Any]:
        """The plain dict :func:`medgen.models.wgan.build_critic` takes."""
        return {
            "d_channels": self.d_channels, "max_channels": self.max_channels, "norm": self.norm,
            "spectral_norm": self.spectral_norm, "self_attention_resolutions": list(self.self_attention_resolutions),
        }  # fmt: skip


@dataclass
class WGANTrain:
    method: Literal["wgan_gp", "gan"] = "wgan_gp"  # wgan_gp: Wasserstein loss + gradient penalty; gan: gan_loss below
    image_size: int = 64  # generated height = width: 64, 128 or 256; real images are brought to it (patch_mode)
    batch_size: int = 32  # per process (per GPU); at least 2 (the generator has BatchNorm)
    max_epochs: int = 100
    n_critic: int = 5  # critic (discriminator) steps per generator step; each takes a fresh real batch
    lambda_gp: float = 10.0  # wgan_gp: weight of the gradient penalty
    lr_generator: float = 2e-4  # per-process LR; the effective LR is lr x world_size
    lr_discriminator: float = 2e-4  # per-process LR of the critic; keep the two balanced (a 1:4 ratio diverged)
    betas: tuple[float, ...] = (0.0, 0.9)  # Adam betas for both networks; no momentum for WGAN-GP
    lr_scheduler: Literal["constant", "cosine", "cosine_warm_restarts"] = "constant"  # per epoch; cosine decays to 0 over max_epochs
    T_0: int = 10  # cosine_warm_restarts: epochs of the first cosine cycle
    T_mult: int = 1  # cosine_warm_restarts: each cycle is T_mult times longer than the previous
    ema_decay: float | None = None  # EMA of the generator weights (e.g. 0.999) used for samples and metrics; null: off
    gan_loss: Literal["bce", "hinge", "least_squares"] = "bce"  # gan: loss on raw logits (bce is BCE-with-logits)
    feature_matching_weight: float = 0.01  # gan: weight of feature matching on critic features (0.1 overwhelmed the generator); 0: off
    grad_clip: float | None = None  # max gradient norm for both networks (1.0 is a common choice for GANs); null: off
    val_interval: int = 1  # sample grid and sample-quality measures every N epochs
    num_eval_samples: int = 256  # generated images compared with (up to as many) held-out real images
    fid_feature_weights: str | None = None  # FID/KID feature network: a local file (TorchScript or state dict) or a name from `medgen weights list`; null: FID off
    fid_feature_model: str | None = None  # for a state-dict file: "package.module:factory" building the network
    fid_in_channels: int | None = None  # channels the feature network expects (3 for ImageNet networks); null: 1
    fid_input_size: int | None = None  # images resized to this before the feature network (e.g. 299); null: as is
    fid_mean: tuple[float, ...] | None = None  # per-channel normalisation after mapping images to [0, 1]; null: none
    fid_std: tuple[float, ...] | None = None

    def validate(self, prefix: str = "wgan_train.") -> None:
        s = self.image_size
        if not MIN_IMAGE_SIZE <= s <= MAX_IMAGE_SIZE or s & (s - 1):
            raise ConfigError(f"{prefix}image_size={s} must be a power of two between 64 and 256: 64, 128 or 256")
        if self.batch_size < 2:
            raise ConfigError(f"{prefix}batch_size={self.batch_size} must be at least 2 (the generator uses BatchNorm)")
        for name in ("max_epochs", "n_critic", "val_interval", "T_0", "T_mult"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}{name}={getattr(self, name)} must be at least 1")
        for name in ("lr_generator", "lr_discriminator"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{prefix}{name}={getattr(self, name)} must be positive, e.g. 2e-4")
        for name in ("lambda_gp", "feature_matching_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{prefix}{name}={getattr(self, name)} must not be negative")
        check_optimiser(self, prefix, "[0.0, 0.9]")
        if self.num_eval_samples < 2:
            raise ConfigError(f"{prefix}num_eval_samples={self.num_eval_samples} must be at least 2")
        # a path must exist; a name (no '/', '.' or '~') is looked up in the weights registry when training starts
        weights = self.fid_feature_weights
        if weights is not None and any(c in weights for c in "/\\.~") and not Path(weights).expanduser().is_file():
            raise ConfigError(
                f"{prefix}fid_feature_weights={weights} does not exist; give a local feature network file or a "
                "network name from `medgen weights list` (medgen never downloads weights), or null to log only the "
                "weight-free measures"
            )
        for name in ("fid_in_channels", "fid_input_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{prefix}{name}={getattr(self, name)} must be at least 1, or null")
        if (self.fid_mean is None) != (self.fid_std is None):
            raise ConfigError(f"{prefix}fid_mean and {prefix}fid_std must be given together (or both null)")


@dataclass
class WGANConfig(RunConfig):
    section = "wgan_train"
    title = "WGAN/GAN"
    marker_keys = ("generator", "critic")

    run_dir: str = "runs/wgan"  # checkpoints, TensorBoard logs, resolved config
    patch_mode: Literal["crop", "resize"] = "resize"  # whole images resized to image_size, or random image_size crops
    num_val_images: int = 16  # fixed-noise samples in the TensorBoard grid at each validation
    generator: GeneratorDef = field(default_factory=GeneratorDef)
    critic: CriticDef = field(default_factory=CriticDef)
    wgan_train: WGANTrain = field(default_factory=WGANTrain)

    def validate(self) -> None:
        super().validate()
        if self.spatial_dims != 2:
            raise ConfigError(f"spatial_dims={self.spatial_dims}: the WGAN-GP and GAN trainers are 2D; set spatial_dims=2")
        self.wgan_train.validate()
        self.generator.validate(self.wgan_train.image_size)
        self.critic.validate(self.wgan_train.image_size)

    @property
    def patch_size(self) -> tuple[int, int]:
        """The (rows, cols) every real image is brought to."""
        return (self.wgan_train.image_size, self.wgan_train.image_size)


__all__ = ["CriticDef", "GeneratorDef", "WGANConfig", "WGANTrain", "attention_resolutions"]
