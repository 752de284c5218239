"""Losses of the VAE-GAN: reconstruction, KL, perceptual (local weights only) and patch-adversarial."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
from monai.losses import PatchAdversarialLoss, PerceptualLoss
from monai.losses.perceptual import HF_MONAI_MODELS
from torch import nn

from medgen.config import AutoencoderTrain, ConfigError

# MONAI's perceptual networks served by torch hub (monai.losses.perceptual loads them from MONAI_HUB_REPO at
# ref main); the 3D ones (medicalnet_*) compare whole volumes, the others 2D images or slices of volumes.
HUB_NETWORKS = tuple(sorted(HF_MONAI_MODELS))
MONAI_HUB_REPO = "Project-MONAI/perceptual-models"
# MONAI networks built from torchvision/lpips, whose weights come from a local file (pretrained_path).
LOCAL_FILE_NETWORKS = ("resnet50", "alex", "vgg", "squeeze")


def hub_checkout(hub_dir: str | Path) -> Path:
    """Where torch hub keeps its checkout of MONAI's perceptual-network repository under ``hub_dir``."""
    owner, name = MONAI_HUB_REPO.split("/")
    return Path(hub_dir) / f"{owner}_{name}_main"


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over latent elements, averaged over the batch.

    Args:
        z_mu, z_sigma: (B, C, *spatial) latent mean and standard deviation from ``AutoencoderKL``.
    """
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1)
    return kl.flatten(1).sum(1).mean()


def reconstruction_loss(kind: str) -> nn.Module:
    """``l1`` (sharper) or ``l2`` reconstruction loss, mean over all elements."""
    return {"l1": nn.L1Loss(), "l2": nn.MSELoss()}[kind]


def adversarial_loss() -> PatchAdversarialLoss:
    """Least-squares patch-adversarial loss (MONAI), as in latent-diffusion autoencoder training."""
    return PatchAdversarialLoss(criterion="least_squares")


@contextlib.contextmanager
def _hub_offline(hub_dir: str | None):
    """torch hub pointed at ``hub_dir`` (restored afterwards: MONAI's ``cache_dir`` sets it for the whole
    process), and Hugging Face downloads off while a hub entry point runs."""
    previous_dir, previous_hf = torch.hub.get_dir(), os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting cache_dir to")  # restored below
            warnings.filterwarnings("ignore", message="MedicalNet networks support channel-wise loss")
            yield
    finally:
        torch.hub.set_dir(previous_dir)
        if previous_hf is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_hf


def _missing_weights(train: AutoencoderTrain, what: str) -> ConfigError:
    net = train.perceptual_network
    args = f"spatial_dims=3, is_fake_3d=False, network_type='{net}'" if net.startswith("medicalnet_") else f"spatial_dims=2, network_type='{net}'"
    return ConfigError(
        f"autoencoder_train.perceptual_weight={train.perceptual_weight} needs the weights of perceptual network "
        f"{train.perceptual_network!r}, but {what}. medgen never downloads at run time: on a machine with internet, "
        f"run `TORCH_HOME=DIR python -c \"import monai; monai.losses.PerceptualLoss({args})\"` and set autoencoder_train.perceptual_cache_dir=DIR/hub, "
        "or set autoencoder_train.perceptual_weights to a local weights file (torchvision networks), "
        "or set autoencoder_train.perceptual_weight=0 to train without it"
    )


def build_perceptual_loss(train: AutoencoderTrain, spatial_dims: int) -> nn.Module | None:
    """MONAI ``PerceptualLoss`` with locally available weights; None when ``perceptual_weight`` is 0.

    Raises ConfigError before training starts when the weights are not on this machine.
    """
    if train.perceptual_weight == 0:
        return None
    net = train.perceptual_network
    medicalnet = net.startswith("medicalnet_")
    if medicalnet and spatial_dims != 3:
        raise ConfigError(
            f"autoencoder_train.perceptual_network={net!r} compares 3D volumes but spatial_dims={spatial_dims}; "
            "use radimagenet_resnet50 for 2D images"
        )
    # medicalnet networks see whole volumes; 2D networks see images, or slices of volumes (2.5D)
    kwargs = dict(spatial_dims=spatial_dims, network_type=net, is_fake_3d=spatial_dims == 3 and not medicalnet,
                  fake_3d_ratio=train.fake_3d_ratio)
    if net in HUB_NETWORKS:
        hub_dir = str(train.perceptual_cache_dir or torch.hub.get_dir())
        if not (hub_checkout(hub_dir) / "hubconf.py").is_file():
            raise _missing_weights(train, f"the torch hub cache {hub_dir} has no {MONAI_HUB_REPO} repository")
        try:
            with _hub_offline(hub_dir):
                loss = PerceptualLoss(**kwargs, cache_dir=hub_dir)
        except Exception as e:  # the hub entry point failed to find its weights offline
            raise _missing_weights(train, f"loading it from {hub_dir} failed ({type(e).__name__}: {e})") from e
    elif net in LOCAL_FILE_NETWORKS:
        path = train.perceptual_weights
        if path is None or not Path(path).is_file():
            raise _missing_weights(train, f"autoencoder_train.perceptual_weights={path!r} is not a file")
        with _hub_offline(None):
            loss = PerceptualLoss(**kwargs, pretrained=True, pretrained_path=path)
    else:
        known = ", ".join([*HUB_NETWORKS, *LOCAL_FILE_NETWORKS])
        raise ConfigError(f"autoencoder_train.perceptual_network={net!r} is not one of {known}")
    return loss.eval().requires_grad_(False)
