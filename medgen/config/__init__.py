"""Typed, validated configs loaded from JSON with dotted ``--set`` overrides.

- ``core``: dataclass <-> JSON, strict keys and types, ``--set`` parsing, :class:`ConfigError`.
- ``run``: :class:`RunConfig`, the paths, data and run keys every trainer shares; :data:`CLASSES`.
- ``load``: :func:`load_config`, the one way to read a config (its kind picked from its sections).
- ``vae``: ``vae_config.json`` (:class:`VAEConfig`); ``wgan``: ``wgan_config.json`` (:class:`WGANConfig`);
  ``ldm``: ``ldm_config.json`` (:class:`LDMConfig`).
"""

from medgen.config.core import ConfigError, apply_overrides, from_dict, read_json, to_dict
from medgen.config.run import CLASSES, RunConfig
from medgen.config.vae import AutoencoderDef, AutoencoderTrain, DiscriminatorDef, VAEConfig
from medgen.config.wgan import CriticDef, GeneratorDef, WGANConfig, WGANTrain
from medgen.config.ldm import DiffusionDef, LDMConfig, LDMTrain
from medgen.config.load import load_config
