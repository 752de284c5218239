"""The perceptual loss: weights only from this machine, a clear stop when they are missing."""

from __future__ import annotations

import textwrap

import pytest
import torch

from conftest import TINY
from medgen.config import AutoencoderTrain, ConfigError
from medgen.losses.vae import build_perceptual_loss
from medgen.training.vae import main


def test_zero_weight_disables_it():
    assert build_perceptual_loss(AutoencoderTrain(perceptual_weight=0.0), spatial_dims=2) is None


def test_missing_weights_stop_training_before_the_first_step(demo2d, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [*TINY, "autoencoder_train.perceptual_weight=1.0", f"autoencoder_train.perceptual_cache_dir={tmp_path / 'empty_hub'}",
            f"data_base_dir={demo2d}", f"run_dir={run}"]
    assert main(["vae_config.json", *[f"--set={s}" for s in sets]]) == 2
    err = capsys.readouterr().err
    assert "perceptual_weight=1.0" in err and "perceptual_cache_dir" in err and "perceptual_weight=0" in err
    assert "never downloads" in err
    assert not (run / "checkpoints").exists()


def test_torchvision_network_without_a_weights_file_is_refused(tmp_path):
    train = AutoencoderTrain(perceptual_network="resnet50", perceptual_weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="perceptual_weights=.*nope.pth.* is not a file"):
        build_perceptual_loss(train, spatial_dims=2)


def test_network_from_a_local_torch_hub_cache_loads_offline(tmp_path):
    # A hub cache as torch.hub leaves it after a first (online) load: the repository checkout with hubconf.py.
    repo = tmp_path / "hub" / "Project-MONAI_perceptual-models_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(textwrap.dedent("""
        import torch
        dependencies = ["torch"]

        def radimagenet_resnet50(verbose=False, **kwargs):
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1))
    """))
    before = torch.hub.get_dir()
    loss = build_perceptual_loss(AutoencoderTrain(perceptual_cache_dir=str(tmp_path / "hub")), spatial_dims=2)
    assert torch.hub.get_dir() == before  # the user's hub directory is left as it was
    assert not any(p.requires_grad for p in loss.parameters())
    x = torch.rand(2, 1, 32, 32)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, torch.rand(2, 1, 32, 32)).item() > 0
