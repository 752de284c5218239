"""Losses: KL, reconstruction, perceptual (MONAI networks from local weights only) and patch-adversarial for the
VAE-GAN (``losses.vae``); WGAN-GP, GAN kinds, gradient penalty and feature matching (``losses.adversarial``)."""

# adversarial losses (WGAN-GP, GAN kinds, feature matching)
from medgen.losses.adversarial import (
    GAN_LOSS_KINDS,
    feature_matching_loss,
    gan_d_loss,
    gan_g_loss,
    gradient_penalty,
    wgan_critic_loss,
    wgan_generator_loss,
)
