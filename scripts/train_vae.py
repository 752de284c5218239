#!/usr/bin/env python
"""Train medgen's AutoencoderKL: `torchrun --nproc_per_node=N scripts/train_vae.py vae_config.json [--set k=v ...]`.

Also runs without torchrun as a single process. Same as `medgen train-vae`; all logic lives in medgen.training.
"""

import sys

from medgen.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("train-vae"))
