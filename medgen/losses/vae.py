"""Losses of the VAE-GAN: reconstruction, KL, perceptual (local weights only) and patch-adversarial."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
from monai.losses import PatchAdversarialLoss, PerceptualLoss
from monai.losses.perceptual import HF_MONAI_MODELS
from monai.utils import OptionalImportError
from torch import nn

from medgen.config import AutoencoderTrain, ConfigError
from medgen.io import weights

# MONAI's perceptual networks served by torch hub (monai.losses.perceptual loads them from weights.MONAI_HUB_REPO
# at ref main); the 3D ones (medicalnet_*) compare whole volumes, the others 2D images or slices of volumes.
HUB_NETWORKS = tuple(sorted(HF_MONAI_MODELS))
# MONAI networks built by torchvision (resnet50) or lpips on torchvision (alex, vgg, squeeze); their weights are
# torchvision's files, read from the hub directory's checkpoints/ (resnet50: or autoencoder_train.perceptual_weights).
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


class DeviceTargetsAdversarialLoss(PatchAdversarialLoss):
    """MONAI's ``PatchAdversarialLoss`` with its target and zero tensors made on the discriminator output's device.
    MONAI builds them from host values (``torch.tensor(1)...to(device)``): on a GPU that is a copy to the device
    that waits for every queued kernel, three times per VAE-GAN step. The values are the same."""

    def get_target_tensor(self, input: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        label = self.real_label if target_is_real else self.fake_label
        return torch.full((), label, dtype=input.dtype, device=input.device).expand_as(input)

    def get_zero_tensor(self, input: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=input.dtype, device=input.device).expand_as(input)


def adversarial_loss() -> PatchAdversarialLoss:
    """Least-squares patch-adversarial loss (MONAI's, targets made on the device), as in latent-diffusion
    autoencoder training."""
    return DeviceTargetsAdversarialLoss(criterion="least_squares")


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
            # MONAI's hub code passes no hash to its file check; medgen checks at fetch, import and verify
            warnings.filterwarnings("ignore", message="No hash value provided")
            yield
    finally:
        torch.hub.set_dir(previous_dir)
        if previous_hf is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_hf


def _hub_dir(train: AutoencoderTrain) -> tuple[Path, str]:
    """The torch hub directory the perceptual network is read from, and how to name it in a message."""
    if train.perceptual_cache_dir:
        return Path(train.perceptual_cache_dir).expanduser(), f"autoencoder_train.perceptual_cache_dir={train.perceptual_cache_dir}"
    home = weights.weights_home()
    return weights.hub_dir(home), f"the weights directory {home}"


def _own_file(train: AutoencoderTrain) -> Path | None:
    """The weights file ``perceptual_weights`` names instead of the hub directory's (resnet50 only)."""
    if train.perceptual_network == "resnet50" and train.perceptual_weights is not None:
        return Path(train.perceptual_weights).expanduser()
    return None


def _missing_weights(train: AutoencoderTrain, what: str) -> ConfigError:
    net = train.perceptual_network
    key = "perceptual_weights" if _own_file(train) else "perceptual_cache_dir" if train.perceptual_cache_dir else None
    into = f" (into {weights.weights_home()}: set autoencoder_train.{key}=null to use it)" if key else ""
    return ConfigError(
        f"autoencoder_train.perceptual_weight={train.perceptual_weight} needs the weights of perceptual network "
        f"{net!r}, but {what}. medgen never downloads at run time: {weights.how_to_get(net)}{into}; "
        "or set autoencoder_train.perceptual_weight=0 to train without it"
    )


def missing_perceptual_weights(train: AutoencoderTrain) -> str | None:
    """Why the configured perceptual network cannot load from this machine (its first missing file), or None
    when every file it needs is here (or ``perceptual_weight`` is 0)."""
    if train.perceptual_weight == 0:
        return None
    own = _own_file(train)
    if own is not None:
        return None if own.is_file() else f"autoencoder_train.perceptual_weights={train.perceptual_weights!r} is not a file"
    hub, where = _hub_dir(train)
    files = [f.in_hub(hub) for f in weights.network(train.perceptual_network).weights_first]
    missing = [p for p in files if not p.is_file()]
    return f"{where} has no {missing[0]}" if missing else None


def build_perceptual_loss(train: AutoencoderTrain, spatial_dims: int) -> nn.Module | None:
    """MONAI ``PerceptualLoss`` with locally available weights; None when ``perceptual_weight`` is 0.

    The network is read from the weights directory (``$MEDGEN_HOME/hub``, a torch hub directory), or from
    ``perceptual_cache_dir`` / ``perceptual_weights`` when set. Raises ConfigError before training starts when
    a file it needs is not on this machine: it is checked before MONAI's loader runs, which would download it.
    """
    if train.perceptual_weight == 0:
        return None
    net = train.perceptual_network
    if net not in (*HUB_NETWORKS, *LOCAL_FILE_NETWORKS):
        known = ", ".join([*HUB_NETWORKS, *LOCAL_FILE_NETWORKS])
        raise ConfigError(f"autoencoder_train.perceptual_network={net!r} is not one of {known}")
    medicalnet = net.startswith("medicalnet_")
    if medicalnet and spatial_dims != 3:
        raise ConfigError(
            f"autoencoder_train.perceptual_network={net!r} compares 3D volumes but spatial_dims={spatial_dims}; "
            "use radimagenet_resnet50 for 2D images"
        )
    if train.perceptual_weights is not None and net != "resnet50":
        raise ConfigError(
            f"autoencoder_train.perceptual_weights applies to perceptual_network='resnet50' only; {net!r} reads its "
            "files from the weights directory (`medgen weights list`): set autoencoder_train.perceptual_weights=null"
        )
    missing = missing_perceptual_weights(train)
    if missing:
        raise _missing_weights(train, missing)
    # medicalnet networks see whole volumes; 2D networks see images, or slices of volumes (2.5D)
    kwargs = dict(spatial_dims=spatial_dims, network_type=net, is_fake_3d=spatial_dims == 3 and not medicalnet,
                  fake_3d_ratio=train.fake_3d_ratio)
    hub, where = _hub_dir(train)
    try:
        with _hub_offline(str(hub)):
            if net == "resnet50":
                path = _own_file(train) or weights.network(net).weights.in_hub(hub)
                loss = PerceptualLoss(**kwargs, pretrained=True, pretrained_path=str(path))
            else:  # MONAI's own loaders read the hub directory: the hub checkout, or torchvision's checkpoints/
                loss = PerceptualLoss(**kwargs, cache_dir=str(hub))
    except OptionalImportError as e:
        package = "lpips" if net in ("alex", "vgg", "squeeze") else "torchvision"
        raise ConfigError(f"autoencoder_train.perceptual_network={net!r} needs the {package} package ({e}): "
                          f"`pip install {package}`, or choose radimagenet_resnet50") from None
    except Exception as e:  # a file is there but is not what the loader expects
        raise _missing_weights(train, f"loading it from {where} failed ({type(e).__name__}: {e}); "
                                      "`medgen weights verify` checks its files") from e
    return loss.eval().requires_grad_(False)
