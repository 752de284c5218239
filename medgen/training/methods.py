"""The training methods medgen has, one table: each trainer class carries its own facts (config class and
section, sub-command name, checked input size, resume keys), and every command that needs one asks here."""

from __future__ import annotations

from medgen.config import ConfigError
from medgen.training.base import Trainer
from medgen.training.ldm import LDMTrainer
from medgen.training.vae import VAETrainer
from medgen.training.wgan import WGANTrainer

#: every method, by its ``medgen train-<name>`` sub-command
METHODS: dict[str, type[Trainer]] = {t.name: t for t in (VAETrainer, WGANTrainer, LDMTrainer)}


def trainer_for(cfg) -> type[Trainer]:
    """The trainer of a loaded config (the method whose config class it is)."""
    for trainer in METHODS.values():
        if type(cfg) is trainer.config_cls:
            return trainer
    raise ConfigError(f"no medgen method trains a {type(cfg).__name__}; use one of "
                      f"{', '.join(t.config_cls.__name__ for t in METHODS.values())}")


__all__ = ["METHODS", "trainer_for"]
