"""Adversarial losses: WGAN-GP (critic, generator, gradient penalty), BCE / hinge / least-squares GAN losses
and feature matching.

``monai.losses.PatchAdversarialLoss`` was checked and is not reused here: its ``bce`` applies a sigmoid and
then ``BCELoss``, which autocast refuses (not AMP-safe), and its ``hinge`` squashes logits with tanh first,
which is not the standard hinge loss of SAGAN/BigGAN. Each criterion below is one line of torch on raw logits,
so one function pair (:func:`gan_d_loss` / :func:`gan_g_loss`) covers all three kinds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "GAN_LOSS_KINDS",
    "gradient_penalty",
    "wgan_critic_loss",
    "wgan_generator_loss",
    "gan_d_loss",
    "gan_g_loss",
    "feature_matching_loss",
]

GAN_LOSS_KINDS = ("bce", "hinge", "least_squares")


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    generator: torch.Generator | None = None,
    alpha: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WGAN-GP gradient penalty (Gulrajani et al. 2017) on per-sample random interpolates.

    ``x_hat = alpha * real + (1 - alpha) * fake`` with one ``alpha ~ U[0, 1]`` per sample; the penalty is
    ``mean_i (||d critic(x_hat_i) / d x_hat_i||_2 - 1)^2`` with the norm over all of a sample's pixels.
    The input gradient is taken with ``create_graph=True`` so that backpropagating the penalty reaches the
    critic's parameters (double backward).

    Under DistributedDataParallel pass the DDP-wrapped critic (the same object used for the real/fake scores):
    the penalty's parameter gradients then flow through DDP's reducer and are averaged across ranks with the
    rest of the critic loss in the single ``loss.backward()``. Keep the critic's attention off the fused
    ``scaled_dot_product_attention`` CUDA kernels, which have no double backward (``SelfAttention2d`` uses an
    explicit softmax for that reason).
    Under fp16 autocast, input gradients can underflow; compute the penalty outside autocast (or in bf16).

    Args:
        critic: maps (B, ...) images to (B,) or (B, 1) scores.
        real: real images (B, C, *spatial); detached here.
        fake: generated images, same shape; detached here (the penalty trains only the critic).
        generator: optional ``torch.Generator`` for reproducible ``alpha``.
        alpha: optional fixed interpolation weights of shape (B,) (overrides ``generator``).

    Returns:
        ``(gp, grad_norm_mean)``: the scalar penalty (differentiable w.r.t. the critic's parameters) and the
        detached mean gradient norm on the interpolates (it should hover near 1 when training is healthy).
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} shapes differ.")
    b = real.shape[0]
    bshape = (b,) + (1,) * (real.dim() - 1)
    if alpha is None:
        alpha = torch.rand(b, generator=generator, device=generator.device if generator is not None else real.device)
    elif alpha.numel() != b:
        raise ValueError(
            f"gradient_penalty: alpha must hold one weight per sample ({b}), got shape {tuple(alpha.shape)}."
        )
    alpha = alpha.to(device=real.device, dtype=real.dtype).reshape(bshape)
    interp = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(interp)
    (grad,) = torch.autograd.grad(outputs=scores.sum(), inputs=interp, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return ((norms - 1) ** 2).mean(), norms.detach().mean()


def wgan_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """WGAN critic loss ``-E[D(real)] + E[D(fake)]`` (add ``lambda_gp * gp`` yourself).

    Its negation is the Wasserstein-distance estimate worth logging.

    Args:
        real_scores: critic scores on real images, any shape.
        fake_scores: critic scores on generated images, any shape.
    """
    return fake_scores.mean() - real_scores.mean()


def wgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """WGAN generator loss ``-E[D(G(z))]``.

    Args:
        fake_scores: critic scores on generated images, any shape.
    """
    return -fake_scores.mean()


def _check_kind(kind: str) -> str:
    if kind not in GAN_LOSS_KINDS:
        raise ValueError(f"GAN loss kind {kind!r} is not known; choose one of {list(GAN_LOSS_KINDS)}.")
    return kind


def gan_d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss: the sum of the real and fake terms (no 1/2 factors), on raw logits.

    - ``bce``: ``BCEWithLogits(real, 1) + BCEWithLogits(fake, 0)`` (AMP-safe).
    - ``hinge``: ``mean(relu(1 - real)) + mean(relu(1 + fake))``.
    - ``least_squares``: ``mean((real - 1)^2) + mean(fake^2)``.

    Args:
        kind: one of :data:`GAN_LOSS_KINDS`.
        real_logits: discriminator outputs on real images, any shape (e.g. (B,) or patch maps).
        fake_logits: discriminator outputs on generated images, any shape.

    Returns:
        scalar loss.
    """
    kind = _check_kind(kind)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    return ((real_logits - 1.0) ** 2).mean() + (fake_logits**2).mean()


def gan_g_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss on the discriminator's raw logits for generated images.

    - ``bce``: non-saturating ``BCEWithLogits(fake, 1)``.
    - ``hinge``: ``-mean(fake)``.
    - ``least_squares``: ``mean((fake - 1)^2)``.

    Args:
        kind: one of :data:`GAN_LOSS_KINDS`.
        fake_logits: discriminator outputs on generated images, any shape.

    Returns:
        scalar loss.
    """
    kind = _check_kind(kind)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if kind == "hinge":
        return -fake_logits.mean()
    return ((fake_logits - 1.0) ** 2).mean()


def feature_matching_loss(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> torch.Tensor:
    """Feature matching (Salimans et al. 2016): squared L2 between batch-mean features, averaged per feature.

    ``mean_k (mean_i f_k(real_i) - mean_i f_k(fake_i))^2``. Real features are detached so the loss only
    trains the generator. Keep its weight small (0.01; 0.1 overwhelmed the generator).

    Args:
        real_feats: (B_real, ...) discriminator features of real images (e.g. ``WGANCritic.features``).
        fake_feats: (B_fake, ...) features of generated images, same per-sample shape.

    Returns:
        scalar loss.
    """
    real_mean = real_feats.detach().flatten(1).mean(0)
    fake_mean = fake_feats.flatten(1).mean(0)
    if real_mean.shape != fake_mean.shape:
        raise ValueError(
            f"feature_matching_loss: per-sample feature sizes differ ({real_mean.numel()} vs {fake_mean.numel()})."
        )
    return F.mse_loss(fake_mean, real_mean)
