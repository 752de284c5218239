"""The perceptual loss: weights only from this machine, a clear stop when they are missing."""

from __future__ import annotations

import textwrap

import pytest
import torch

from conftest import TINY, stand_in_weights
from medgen.config import AutoencoderTrain, ConfigError
from medgen.losses.vae import build_perceptual_loss
from conftest import train_vae as main


def test_zero_weight_disables_it():
    assert build_perceptual_loss(AutoencoderTrain(perceptual_weight=0.0), spatial_dims=2) is None


def test_missing_weights_stop_training_before_the_first_step(demo2d, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [*TINY, "autoencoder_train.perceptual_weight=1.0", f"autoencoder_train.perceptual_cache_dir={tmp_path / 'empty_hub'}",
            f"data_base_dir={demo2d}", f"run_dir={run}"]
    assert main(["vae_config.json", *[f"--set={s}" for s in sets]]) == 2
    err = capsys.readouterr().err
    assert "perceptual_weight=1.0" in err and "perceptual_cache_dir" in err and "perceptual_weight=0" in err
    assert "never downloads" in err and "medgen weights fetch radimagenet_resnet50" in err
    assert not (run / "checkpoints").exists()


def test_torchvision_network_without_a_weights_file_is_refused(tmp_path):
    train = AutoencoderTrain(perceptual_network="resnet50", perceptual_weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="perceptual_weights=.*nope.pth.* is not a file"):
        build_perceptual_loss(train, spatial_dims=2)


def test_a_weights_file_is_for_resnet50_only(tmp_path):
    train = AutoencoderTrain(perceptual_weights=str(tmp_path / "radimagenet.pth"))
    with pytest.raises(ConfigError, match="perceptual_weights applies to perceptual_network='resnet50' only"):
        build_perceptual_loss(train, spatial_dims=2)


def _stand_in_hub_cache(hub) -> None:
    """A hub cache as torch hub and MONAI's loaders leave it after a first (online) load of MONAI's perceptual
    networks: the checkout of the repository MONAI loads them from, and the weights beside it, under the real
    names (stand-ins: 2D RadImageNet with 3 input channels; 3D MedicalNet with 1 channel, 3D convolutions)."""
    stand_in_weights(hub.parent)
    assert hub == hub.parent / "hub"


def test_network_from_a_local_torch_hub_cache_loads_offline(tmp_path):
    _stand_in_hub_cache(tmp_path / "hub")
    before = torch.hub.get_dir()
    loss = build_perceptual_loss(AutoencoderTrain(perceptual_cache_dir=str(tmp_path / "hub")), spatial_dims=2)
    assert torch.hub.get_dir() == before  # the user's hub directory is left as it was
    assert not any(p.requires_grad for p in loss.parameters())
    x = torch.rand(2, 1, 32, 32)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, torch.rand(2, 1, 32, 32)).item() > 0


def test_medicalnet_from_the_hub_cache_trains_a_3d_run(demo3d, tmp_path):
    """The 3D perceptual network, from the hub repository MONAI itself uses, in a whole 3D training run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _stand_in_hub_cache(tmp_path / "hub")
    run = tmp_path / "run3d"
    sets = [*TINY, "spatial_dims=3", "autoencoder_def.spatial_dims=3", "autoencoder_train.patch_size=[16,16,16]",
            "autoencoder_train.max_epochs=1", "autoencoder_train.perceptual_weight=1.0",
            "autoencoder_train.perceptual_network=medicalnet_resnet10_23datasets",
            f"autoencoder_train.perceptual_cache_dir={tmp_path / 'hub'}", f"data_base_dir={demo3d}", f"run_dir={run}"]
    before = torch.hub.get_dir()
    assert main(["vae_config.json", *[f"--set={s}" for s in sets]]) == 0
    assert torch.hub.get_dir() == before
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    perceptual = [e.value for e in acc.Scalars("epoch/loss/perceptual")]
    assert perceptual and all(0 < v < float("inf") for v in perceptual)


def test_medicalnet_is_refused_for_2d_with_the_fix(tmp_path):
    _stand_in_hub_cache(tmp_path / "hub")
    train = AutoencoderTrain(perceptual_network="medicalnet_resnet10_23datasets", perceptual_cache_dir=str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match="compares 3D volumes but spatial_dims=2; use radimagenet_resnet50"):
        build_perceptual_loss(train, spatial_dims=2)


def test_medgen_looks_for_the_hub_repository_monai_loads_from():
    import inspect

    import monai.losses.perceptual as perceptual

    from medgen.io.weights import MONAI_HUB_REPO

    source = inspect.getsource(perceptual)
    assert f'torch.hub.load(\n            "{MONAI_HUB_REPO}:main"' in source  # fixed ref: no default-branch lookup online
    assert "warvito" not in source.lower()
