"""Typed, validated configs loaded from JSON with dotted ``--set`` overrides."""

from medgen.config.core import ConfigError, apply_overrides, from_dict, read_json, to_dict
from medgen.config.vae import (
    AutoencoderDef,
    AutoencoderTrain,
    DiscriminatorDef,
    RunConfig,
    VAEConfig,
    load_config,
)
# WGAN-GP / GAN config (wgan_config.json)
from medgen.config.wgan import CriticDef, GeneratorDef, WGANConfig, WGANTrain
