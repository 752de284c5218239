"""The `medgen` command line: one sub-command per module.

Each module listed in ``COMMANDS`` defines ``register(subparsers)``, which adds its sub-parser and sets
``func`` (called with the parsed arguments, returning the exit code). Modules are imported only when
the CLI starts, so ``import medgen`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = (
    "medgen.data.demo",  # demo-data
    "medgen.data.check",  # check-data
    "medgen.training.vae",  # train-vae
    "medgen.fit_decoder",  # fit-decoder
    "medgen.inference",  # reconstruct, encode
    "medgen.training.wgan",  # train-wgan
    "medgen.sample",  # sample
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medgen", description="Generative models for dental radiographs and CBCT: data checks, training, inference."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
