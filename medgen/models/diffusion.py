"""The latent diffusion UNet, its noise schedulers (MONAI) and the sampling loop with classifier-free guidance.

Training and sampling share these, so a checkpoint samples the way it was trained:

- :func:`build_unet`: MONAI ``DiffusionModelUNet`` from ``diffusion_def``; class-conditional models get three
  class embeddings, ``edente`` (0), ``dente`` (1) and ``NULL_CLASS`` (2, "no class", what label dropout trains).
- :func:`training_scheduler`: DDPM (noise prediction) or rectified flow (velocity prediction).
- :func:`sample_latents`: the reverse process from given noise with DDPM, DDIM or rectified flow steps;
  :func:`generate_images`: that, then tiled decoding to images of any size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler

from medgen.config import CLASSES, DiffusionDef
from medgen.errors import InvalidValueError

__all__ = ["CLASS_INDEX", "NULL_CLASS", "SAMPLERS", "build_unet", "training_scheduler", "sampling_scheduler",
           "training_target", "sample_latents", "generate_images", "latent_noise_shape"]

CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}
NULL_CLASS = len(CLASSES)  # the "no class" embedding of classifier-free guidance
# samplers each training objective supports
SAMPLERS = {"ddpm": ("ddim", "ddpm"), "rflow": ("rflow",)}
# MONAI's latent diffusion tutorials: scaled-linear betas from 0.0015 to 0.0195
_BETAS = dict(schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195, clip_sample=False)


def build_unet(unet_def: DiffusionDef, spatial_dims: int, latent_channels: int, conditional: bool) -> DiffusionModelUNet:
    """MONAI ``DiffusionModelUNet`` on ``latent_channels`` latents; ``conditional``: 3 class embeddings."""
    return DiffusionModelUNet(
        spatial_dims=spatial_dims,
        in_channels=latent_channels,
        out_channels=latent_channels,
        channels=tuple(unet_def.channels),
        attention_levels=tuple(unet_def.attention_levels),
        num_res_blocks=unet_def.num_res_blocks,
        num_head_channels=unet_def.num_head_channels,
        norm_num_groups=unet_def.norm_num_groups,
        num_class_embeds=len(CLASS_INDEX) + 1 if conditional else None,
        use_flash_attention=True,  # PyTorch's scaled-dot-product attention (no attention matrix)
    )


def training_scheduler(kind: str, num_train_timesteps: int):
    """The noise schedule a model is trained with: ``ddpm`` (target: the noise) or ``rflow`` (target: x0 - noise)."""
    if kind == "rflow":
        return RFlowScheduler(num_train_timesteps=num_train_timesteps, use_discrete_timesteps=True, sample_method="uniform")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, **_BETAS)


def training_target(kind: str, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict from the noisy latent."""
    return x0 - noise if kind == "rflow" else noise


def sampling_scheduler(trained_with: str, sampler: str, num_train_timesteps: int):
    """The scheduler that runs ``sampler`` (ddpm / ddim / rflow) on a model trained with ``trained_with``."""
    if sampler not in SAMPLERS[trained_with]:
        raise InvalidValueError(f"a model trained with scheduler {trained_with} samples with "
                                f"{' or '.join(SAMPLERS[trained_with])}, not {sampler}")
    if sampler == "ddim":
        return DDIMScheduler(num_train_timesteps=num_train_timesteps, **_BETAS)
    return training_scheduler(trained_with, num_train_timesteps)


@torch.no_grad()
def sample_latents(
    unet: torch.nn.Module,
    noise: torch.Tensor,
    trained_with: str,
    sampler: str,
    num_train_timesteps: int,
    steps: int,
    labels: Sequence[int] | torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    autocast=None,
    on_step: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Run the reverse process from ``noise`` (B, C, *latent_spatial) to (scaled) latents.

    Args:
        unet: the (EMA) UNet in eval mode.
        trained_with, sampler, num_train_timesteps: see :func:`sampling_scheduler`.
        steps: sampling steps (``ddpm`` with fewer steps than training skips timesteps evenly).
        labels: class indices per sample (:data:`CLASS_INDEX`) for a conditional model; None: unconditional.
        guidance_scale: classifier-free guidance ``uncond + s * (cond - uncond)``; 1: the conditional model alone.
        generator: draws the noise of stochastic (ddpm) steps, so that equal seeds give equal samples.
        autocast: a context-manager factory (mixed precision) or None.
        on_step: called after each denoising step (progress).

    Returns:
        float32 latents on ``noise``'s device.
    """
    scheduler = sampling_scheduler(trained_with, sampler, num_train_timesteps)
    if not 1 <= steps <= num_train_timesteps:
        raise InvalidValueError(f"--steps {steps} must be between 1 and the model's {num_train_timesteps} training timesteps")
    device = noise.device
    scheduler.set_timesteps(steps, device=device)
    timesteps = list(scheduler.timesteps)
    x = noise.float()
    b = x.shape[0]
    guided = labels is not None and guidance_scale != 1.0
    if labels is not None:
        labels = torch.as_tensor(labels, device=device).long()
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, NULL_CLASS)])
    for i, t in enumerate(timesteps):
        inp = torch.cat([x, x]) if guided else x
        tt = torch.full((inp.shape[0],), int(t), device=device, dtype=torch.long)
        ctx = autocast() if autocast is not None else torch.autocast(device.type, enabled=False)
        with ctx:
            out = unet(inp, timesteps=tt, class_labels=labels).float()
        if guided:
            cond, uncond = out[:b], out[b:]
            out = uncond + guidance_scale * (cond - uncond)
        if sampler == "rflow":
            nxt = timesteps[i + 1] if i + 1 < len(timesteps) else torch.zeros_like(t)
            x, _ = scheduler.step(out, int(t), x, int(nxt))
        else:
            x, _ = scheduler.step(out, int(t), x, generator=generator)
        if on_step is not None:
            on_step()
    return x


def _up(n: int, k: int) -> int:
    return -(-n // k) * k


@torch.no_grad()
def generate_images(
    unet: torch.nn.Module,
    autoencoder: torch.nn.Module,
    tiling,
    scale_factor: float,
    noise: torch.Tensor,
    image_shape: Sequence[int],
    trained_with: str,
    sampler: str,
    num_train_timesteps: int,
    steps: int,
    labels: Sequence[int] | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    autocast=None,
    on_step: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Images of ``image_shape`` (any size) in [0, 1]: sample latents, unscale, decode in tiles, crop.

    Args:
        noise: ``(B, latent_channels, *latent_noise_shape(image_shape, ...))`` on the device to sample on.
        the rest: see :func:`sample_latents`; ``tiling`` as for :func:`medgen.models.tiled.tiled_decode`.

    The latent is sampled at the size :func:`latent_noise_shape` gives (the image's latent, rounded up to the
    UNet's downsampling), cropped to the image's latent, decoded and cropped to ``image_shape``.

    Returns:
        ``(B, out_channels, *image_shape)`` float32 on the CPU.
    """
    from medgen.models.tiled import downsample_factor, tiled_decode

    f = downsample_factor(autoencoder)
    z = sample_latents(unet, noise, trained_with, sampler, num_train_timesteps, steps, labels, guidance_scale,
                       generator, autocast, on_step)
    z = z[(slice(None), slice(None), *(slice(0, -(-s // f)) for s in image_shape))]
    images = tiled_decode(autoencoder, z / scale_factor, tiling)
    return images[(slice(None), slice(None), *(slice(0, s) for s in image_shape))].clamp(0, 1).cpu()


def latent_noise_shape(image_shape: Sequence[int], ae_factor: int, unet_factor: int) -> tuple[int, ...]:
    """The latent size sampled for an image of ``image_shape``: its latent rounded up to the UNet's downsampling."""
    return tuple(_up(-(-s // ae_factor), unet_factor) for s in image_shape)
