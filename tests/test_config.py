"""Config loading: seed keys and defaults, one-line errors naming key, value and fix, --set overrides."""

import json
from pathlib import Path

import pytest

from medgen.config import ConfigError, VAEConfig, load_config
from medgen.config.core import apply_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "vae_config.json"

# Keys and defaults from the config specification (paths, data, autoencoder_def, autoencoder_train).
SPEC_DEFAULTS = {
    "data_source": "edente", "train_split": 0.9, "val_dir": None, "augment": False, "spatial_dims": 2,
    "resume_ckpt": False,
    "autoencoder_def.spatial_dims": 2, "autoencoder_def.in_channels": 1, "autoencoder_def.out_channels": 1,
    "autoencoder_def.latent_channels": 4, "autoencoder_def.channels": [64, 128, 256],
    "autoencoder_def.num_res_blocks": 2, "autoencoder_def.norm_num_groups": 32, "autoencoder_def.norm_eps": 1e-6,
    "autoencoder_def.attention_levels": [False, False, False],
    "autoencoder_def.with_encoder_nonlocal_attn": True, "autoencoder_def.with_decoder_nonlocal_attn": True,
    "autoencoder_train.batch_size": 8, "autoencoder_train.patch_size": [256, 256],
    "autoencoder_train.max_epochs": 100, "autoencoder_train.val_interval": 1, "autoencoder_train.lr": 2.5e-5,
    "autoencoder_train.perceptual_weight": 1.0, "autoencoder_train.kl_weight": 1e-6,
    "autoencoder_train.recon_loss": "l1",
}


def _get(data, dotted):
    for part in dotted.split("."):
        data = data[part]
    return data


def test_top_level_config_has_every_spec_key_with_its_default():
    data = json.loads(CONFIG.read_text())
    for key, default in SPEC_DEFAULTS.items():
        assert _get(data, key) == default, key
    for key in ("data_base_dir", "run_dir", "checkpoint_dir"):
        assert key in data
    cfg = load_config(CONFIG)
    assert cfg == VAEConfig()  # the file and the typed defaults are the same source


@pytest.mark.parametrize(
    "override, message",
    [
        ("autoencoder_def.norm_num_groups=48", "autoencoder_def.norm_num_groups=48 does not divide channel count 64"),
        ("autoencoder_train.patch_size=[256]", "autoencoder_train.patch_size=[256] has 1 entries but spatial_dims=2"),
        ("autoencoder_train.patch_size=[250,256]", "250 is not divisible by 4"),
        ("spatial_dims=3", "autoencoder_def.spatial_dims=2 disagrees with spatial_dims=3"),
        ('data_source="dentes"', 'data_source="dentes" is not one of "edente", "dente", "both" (did you mean "dente"?)'),
        ("train_split=1.0", "train_split=1.0 must be between 0 and 1"),
        ("train_split=0", "train_split=0.0 must be between 0 and 1"),
        ('autoencoder_train.recon_loss="l3"', 'autoencoder_train.recon_loss="l3" is not one of "l1", "l2"'),
        ("autoencoder_train.kl_wieght=1e-6", "unknown config key autoencoder_train.kl_wieght; did you mean autoencoder_train.kl_weight?"),
        ("augmentt=true", "unknown config key augmentt; did you mean augment?"),
        ('autoencoder_train.lr="fast"', 'autoencoder_train.lr="fast" must be a number'),
        ("autoencoder_def.attention_levels=[true,false]", "attention_levels has 2 entries but autoencoder_def.channels has 3"),
    ],
)
def test_config_errors_are_one_line_and_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG, [override])
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_group_norm_error_suggests_a_valid_divisor():
    with pytest.raises(ConfigError, match=r"use a common divisor such as (24|48)"):
        load_config(CONFIG, ["autoencoder_def.channels=[48,96,192]", "autoencoder_def.norm_num_groups=32"])


def test_set_overrides_take_json_values_and_plain_strings():
    cfg = load_config(CONFIG, ["autoencoder_train.lr=1e-5", "run_dir=runs/x", "autoencoder_def.channels=[32,64,128]",
                               "autoencoder_train.patch_size=[128,128]", "val_dir=null"])
    assert cfg.autoencoder_train.lr == 1e-5
    assert cfg.run_dir == "runs/x"
    assert cfg.autoencoder_def.channels == (32, 64, 128)
    assert cfg.val_dir is None


def test_set_needs_key_equals_value():
    with pytest.raises(ConfigError, match="key.path=VALUE"):
        apply_overrides({}, ["autoencoder_train.lr"])


def test_invalid_json_file_names_file_and_line(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{\n  "augment": true,\n}\n')
    with pytest.raises(ConfigError, match=r"c.json:3:\d+: invalid JSON"):
        load_config(bad)


def test_3d_config_validates():
    cfg = load_config(CONFIG, ["spatial_dims=3", "autoencoder_def.spatial_dims=3", "autoencoder_train.patch_size=[64,64,64]"])
    assert cfg.autoencoder_train.patch_size == (64, 64, 64)


def test_empty_data_folder_is_named_with_demo_data_hint(tmp_path):
    from medgen.io.discovery import discover_items

    (tmp_path / "edente").mkdir()
    cfg = load_config(CONFIG, [f"data_base_dir={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        discover_items(cfg)
    assert str(tmp_path / "edente") in str(err.value)
    assert "medgen demo-data" in str(err.value)
