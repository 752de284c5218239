"""``medgen train-vae``, ``train-wgan`` and ``train-ldm`` (also ``scripts/train_vae.py``, ``train_wgan.py``,
``train_ldm.py``): one sub-command per method of :data:`medgen.training.methods.METHODS`."""

from __future__ import annotations

import argparse
import logging

def add_set_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable): config overrides, as every command that reads a config takes them."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override a config key (dotted path, JSON value), e.g. --set {example}",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    from medgen.training.methods import METHODS

    for name, trainer_cls in METHODS.items():
        p = subparsers.add_parser(f"train-{name}", help=trainer_cls.command_help, description=trainer_cls.command_help)
        p.add_argument("config", help=f"config JSON file, e.g. {trainer_cls.example_config}")
        add_set_argument(p, trainer_cls.example_set)
        p.set_defaults(func=_train, trainer_cls=trainer_cls)


def _train(args: argparse.Namespace) -> int:
    from medgen.training.base import launch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    launch(args.config, args.overrides, args.trainer_cls)
    return 0
