"""The shipped recipes (configs/radiograph_2d.json, configs/cbct_3d.json) train offline as they stand: only the
sizes are made tiny here; every other key, the perceptual term (off) and the whole-image validation included,
is the file's."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, train_vae
from medgen.config import load_config
from medgen.io.checkpoint import load_checkpoint

TINY_2D = ["autoencoder_def.channels=[8,16]", "autoencoder_def.attention_levels=[false,false]",
           "discriminator_def.channels=8", "discriminator_def.num_layers_d=2", "autoencoder_train.patch_size=[32,32]",
           "autoencoder_train.batch_size=2", "autoencoder_train.max_epochs=2", "num_workers=0", "scan_workers=0"]
TINY_3D = [*TINY_2D[:-5], "autoencoder_train.patch_size=[16,16,16]", *TINY_2D[-4:], "patches_per_image=2"]


@pytest.mark.parametrize("config, demo, tiny", [("configs/radiograph_2d.json", "demo2d", TINY_2D), ("configs/cbct_3d.json", "demo3d", TINY_3D)])
def test_recipe_trains_offline_as_shipped(config, demo, tiny, request, tmp_path):
    shipped = load_config(ROOT / config, [])
    assert shipped.autoencoder_train.perceptual_weight == 0 and shipped.val_full_images
    assert shipped.autoencoder_def.norm_num_groups == 1  # the whole-image intensity (README: Results on real radiographs)
    assert shipped.autoencoder_train.lr_scheduler == "warmup_cosine" and shipped.max_time is not None
    run = tmp_path / "run"
    sets = [*tiny, f"data_base_dir={request.getfixturevalue(demo)}", f"run_dir={run}"]
    assert train_vae([str(ROOT / config), *[f"--set={o}" for o in sets]]) == 0
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and (run / "checkpoints" / "best.pt").is_file()
    assert json.loads((run / "config.json").read_text())["autoencoder_train"]["lr_scheduler"] == "warmup_cosine"
