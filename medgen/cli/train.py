"""``medgen train-vae``, ``train-wgan`` and ``train-ldm`` (also ``scripts/train_vae.py``, ``train_wgan.py``, ``train_ldm.py``)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from medgen.training.base import add_arguments
    from medgen.training.ldm import LDMTrainer
    from medgen.training.vae import VAETrainer
    from medgen.training.wgan import WGANTrainer

    for trainer_cls, help_text in (
        (VAETrainer, "train the AutoencoderKL (VAE-GAN; same as scripts/train_vae.py)"),
        (WGANTrainer, "train a WGAN-GP or GAN (same as scripts/train_wgan.py)"),
        (LDMTrainer, "train a latent diffusion model on a trained autoencoder (same as scripts/train_ldm.py)"),
    ):
        p = subparsers.add_parser(f"train-{trainer_cls.name}", help=help_text, description=help_text)
        add_arguments(p, trainer_cls)
        p.set_defaults(func=_train, trainer_cls=trainer_cls)


def _train(args: argparse.Namespace) -> int:
    from medgen.training.base import launch

    launch(args.config, args.overrides, args.trainer_cls)
    return 0
