"""Losses of the VAE-GAN: reconstruction, KL, perceptual (local weights only) and patch-adversarial."""

from __future__ import annotations

import contextlib
import os
import urllib.error
from pathlib import Path
from unittest import mock

import torch
from monai.losses import PatchAdversarialLoss, PerceptualLoss
from torch import nn

from medgen.config import AutoencoderTrain, ConfigError

# MONAI networks fetched through torch hub, and the hub repository that provides them.
HUB_NETWORKS = {
    "radimagenet_resnet50": "Project-MONAI/perceptual-models",
    "medicalnet_resnet10_23datasets": "warvito/MedicalNet-models",
    "medicalnet_resnet50_23datasets": "warvito/MedicalNet-models",
}
# MONAI networks built from torchvision/lpips, whose weights come from a local file (pretrained_path).
LOCAL_FILE_NETWORKS = ("resnet50", "alex", "vgg", "squeeze")


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
def _offline_torch_hub():
    """torch hub asks GitHub for a repository's default branch before using its cache; refuse that
    request so the cached copy is used and nothing is fetched at run time."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("medgen loads perceptual networks offline")

    with mock.patch("torch.hub.urlopen", refuse), mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
        yield


def _missing_weights(train: AutoencoderTrain, what: str) -> ConfigError:
    return ConfigError(
        f"autoencoder_train.perceptual_weight={train.perceptual_weight} needs the weights of perceptual network "
        f"{train.perceptual_network!r}, but {what}. medgen never downloads at run time: on a machine with internet, "
        f"run `TORCH_HOME=DIR python -c \"import monai; monai.losses.PerceptualLoss(spatial_dims=2, "
        f"network_type='{train.perceptual_network}')\"` and set autoencoder_train.perceptual_cache_dir=DIR/hub, "
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
    kwargs = dict(spatial_dims=spatial_dims, network_type=net, is_fake_3d=spatial_dims == 3, fake_3d_ratio=train.fake_3d_ratio)
    if net in HUB_NETWORKS:
        hub_dir = Path(train.perceptual_cache_dir or torch.hub.get_dir())
        owner, name = HUB_NETWORKS[net].split("/")
        cached = [hub_dir / f"{owner}_{name}_{ref}" for ref in ("main", "master")]
        if not any((d / "hubconf.py").is_file() for d in cached):
            raise _missing_weights(train, f"the torch hub cache {hub_dir} has no {HUB_NETWORKS[net]} repository")
        previous = torch.hub.get_dir()
        torch.hub.set_dir(str(hub_dir))
        try:
            with _offline_torch_hub():
                loss = PerceptualLoss(**kwargs)
        except Exception as e:  # the hub entry point failed to find its weights offline
            raise _missing_weights(train, f"loading it from {hub_dir} failed ({type(e).__name__}: {e})") from e
        finally:
            torch.hub.set_dir(previous)
    elif net in LOCAL_FILE_NETWORKS:
        path = train.perceptual_weights
        if path is None or not Path(path).is_file():
            raise _missing_weights(train, f"autoencoder_train.perceptual_weights={path!r} is not a file")
        with _offline_torch_hub():
            loss = PerceptualLoss(**kwargs, pretrained=True, pretrained_path=path)
    else:
        known = ", ".join([*HUB_NETWORKS, *LOCAL_FILE_NETWORKS])
        raise ConfigError(f"autoencoder_train.perceptual_network={net!r} is not one of {known}")
    return loss.eval().requires_grad_(False)
