#!/usr/bin/env python
"""Train a latent diffusion model on a trained medgen autoencoder: `torchrun --nproc_per_node=N scripts/train_ldm.py ldm_config.json [--set k=v ...]`.

Also runs without torchrun as a single process. Same as `medgen train-ldm`; all logic lives in medgen.training.
"""

import sys

from medgen.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("train-ldm"))
