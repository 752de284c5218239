#!/usr/bin/env python
"""Train a WGAN-GP or GAN: `torchrun --nproc_per_node=N scripts/train_wgan.py wgan_config.json [--set k=v ...]`.

Also runs without torchrun as a single process. Same as `medgen train-wgan`; all logic lives in medgen.training.
"""

import sys

from medgen.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("train-wgan"))
