"""AutoencoderKL and PatchDiscriminator factories (MONAI core), and loading trained autoencoders with the
config they were trained with."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from monai.networks.nets import AutoencoderKL, PatchDiscriminator

from medgen.config import AutoencoderDef, ConfigError, DiscriminatorDef, VAEConfig, from_dict, load_config
from medgen.errors import InvalidValueError
from medgen.io.checkpoint import CheckpointError, load_checkpoint, without_prefix
from medgen.models.device import default_device


def build_autoencoder(ae_def: AutoencoderDef, cls: type[AutoencoderKL] = AutoencoderKL) -> AutoencoderKL:
    """MONAI ``AutoencoderKL`` from ``autoencoder_def`` (GroupNorm, per-level attention, non-local attention),
    attention through ``torch.nn.functional.scaled_dot_product_attention``.

    ``cls`` may be a subclass with the same constructor (e.g. one whose forward only reconstructs).
    """
    return cls(
        spatial_dims=ae_def.spatial_dims,
        in_channels=ae_def.in_channels,
        out_channels=ae_def.out_channels,
        channels=tuple(ae_def.channels),
        latent_channels=ae_def.latent_channels,
        num_res_blocks=ae_def.num_res_blocks,
        norm_num_groups=ae_def.norm_num_groups,
        norm_eps=ae_def.norm_eps,
        attention_levels=tuple(ae_def.attention_levels),
        with_encoder_nonlocal_attn=ae_def.with_encoder_nonlocal_attn,
        with_decoder_nonlocal_attn=ae_def.with_decoder_nonlocal_attn,
        # PyTorch's scaled-dot-product attention: no attention matrix is materialised (same weights and keys)
        use_flash_attention=True,
    )


class ReconstructionAutoencoderKL(AutoencoderKL):
    """MONAI ``AutoencoderKL`` whose ``forward`` is the deterministic reconstruction ``decode(z_mu)``.

    MONAI's ``forward`` samples ``z`` (two calls differ) and returns ``(reconstruction, z_mu, z_sigma)``;
    this is the network inference runs and ``monai.bundle ckpt_export`` exports. Same modules and
    state-dict keys as ``AutoencoderKL``, so medgen checkpoints load unchanged.

    Input ``(B, C, *spatial)``, each spatial size a multiple of the downsampling factor; output the same shape.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.reconstruct(x)


def reconstruction_network(autoencoder_def: AutoencoderDef | dict) -> ReconstructionAutoencoderKL:
    """The architecture of ``autoencoder_def`` (built by :func:`build_autoencoder`,
    untrained, eval mode) as a :class:`ReconstructionAutoencoderKL`: the bundles' ``network_def``."""
    if not isinstance(autoencoder_def, AutoencoderDef):
        autoencoder_def = from_dict(AutoencoderDef, dict(autoencoder_def), prefix="autoencoder_def.")
    return build_autoencoder(autoencoder_def, cls=ReconstructionAutoencoderKL).eval()


def build_discriminator(disc_def: DiscriminatorDef, spatial_dims: int, in_channels: int) -> PatchDiscriminator:
    """MONAI ``PatchDiscriminator``; its last output is the patch logit map."""
    return PatchDiscriminator(
        spatial_dims=spatial_dims,
        num_layers_d=disc_def.num_layers_d,
        channels=disc_def.channels,
        in_channels=in_channels,
        out_channels=1,
        kernel_size=disc_def.kernel_size,
        norm=disc_def.norm,
    )


def _as_ae_def(autoencoder_def: AutoencoderDef | Mapping[str, Any] | None, ckpt: Mapping[str, Any]) -> AutoencoderDef:
    if isinstance(autoencoder_def, AutoencoderDef):
        return autoencoder_def
    if autoencoder_def is not None:
        return from_dict(AutoencoderDef, dict(autoencoder_def), prefix="autoencoder_def.")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), Mapping) else None
    if config is None or "autoencoder_def" not in config:
        raise ConfigError("the checkpoint holds no config; pass autoencoder_def (the architecture it was trained with)")
    return from_dict(AutoencoderDef, dict(config["autoencoder_def"]), prefix="autoencoder_def.")


def load_autoencoder(
    path: str | Path,
    autoencoder_def: AutoencoderDef | Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> AutoencoderKL:
    """A ready AutoencoderKL (eval mode) from a checkpoint file.

    Args:
        path: a medgen checkpoint (weights under ``autoencoder``), a plain ``state_dict`` of MONAI's
            AutoencoderKL, or a state dict saved by the archived monai-generative package (its attention
            blocks use other names; MONAI's ``load_old_state_dict`` maps them).
        autoencoder_def: the architecture; optional for medgen checkpoints, which carry their config.
        map_location: device for the loaded tensors.
    """
    path = Path(path)
    ckpt = load_checkpoint(path, map_location=map_location)
    if not isinstance(ckpt, Mapping):
        raise InvalidValueError(f"{path} does not hold a state dict or a medgen checkpoint")
    state = ckpt.get("autoencoder", ckpt)
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    model = build_autoencoder(_as_ae_def(autoencoder_def, ckpt))
    state = without_prefix(state)
    if set(state) == set(model.state_dict()):
        model.load_state_dict(state)
    else:
        # monai-generative's AttentionBlock defined `proj_attn` but never applied it; MONAI would map it onto
        # `out_proj`, which it does apply. Dropping it makes MONAI use an identity projection: the old outputs.
        old = {k: v for k, v in state.items() if ".proj_attn." not in k}
        try:
            model.load_old_state_dict(old)
        except (KeyError, RuntimeError) as e:
            raise InvalidValueError(
                f"{path} does not match autoencoder_def (neither a MONAI nor a monai-generative AutoencoderKL "
                f"state dict of this architecture): {e}"
            ) from None
    return model.to(map_location).eval()


def autoencoder_config(checkpoint: str | Path, config: str | Path | None = None, key: str | None = None) -> VAEConfig:
    """The training config of an autoencoder checkpoint: the one ``medgen train-vae`` stored in it, or ``config``
    for a plain state dict.

    Args:
        checkpoint: a checkpoint written by the VAE trainer (``{"autoencoder", "config", ...}``) or a plain
            AutoencoderKL state dict.
        config: a VAE config JSON (architecture, ``patch_size``, preprocessing); used only when the checkpoint
            holds no config.
        key: the config key that names ``checkpoint`` (e.g. ``"autoencoder_checkpoint"``), for the messages.

    Raises:
        CheckpointError: the file does not exist.
        ConfigError: the checkpoint holds no config and none is given, or it was written by another trainer.
    """
    checkpoint = Path(checkpoint)
    name = f"{key}={checkpoint}" if key else f"checkpoint {checkpoint}"
    if not checkpoint.is_file():
        raise CheckpointError(f"{name} does not exist; train an autoencoder first (`medgen train-vae vae_config.json`) "
                              "and give its run_dir/checkpoints/best.pt")
    ckpt = load_checkpoint(checkpoint, mmap=True)  # mmap: the small config without reading every tensor
    stored = ckpt.get("config") if isinstance(ckpt, Mapping) else None
    if isinstance(stored, Mapping):
        if "autoencoder_def" not in stored or "autoencoder" not in ckpt:
            raise ConfigError(f"{name} was not written by `medgen train-vae` (no autoencoder weights and config: a WGAN, "
                              "GAN or latent diffusion checkpoint?); give a VAE run's checkpoints/best.pt or last.pt")
        return VAEConfig.from_dict(dict(stored))
    if config is None:
        raise ConfigError(
            f"{name} holds no training config (a plain state dict?); pass --config with the VAE config it was "
            "trained with (autoencoder_def, autoencoder_train.patch_size, intensity_percentiles, patch_mode)"
        )
    return load_config(config)


def load_model(
    checkpoint: str | Path, config: str | Path | None = None, device: str | torch.device | None = None
) -> tuple[AutoencoderKL, VAEConfig]:
    """``(autoencoder in eval mode on device, training config)`` from a checkpoint (see :func:`autoencoder_config`)."""
    device = torch.device(device) if device is not None else default_device()
    cfg = autoencoder_config(checkpoint, config)
    model = load_autoencoder(checkpoint, cfg.autoencoder_def, map_location=device)
    return model, cfg
