#!/usr/bin/env python
"""Train medgen's AutoencoderKL: `torchrun --nproc_per_node=N scripts/train_vae.py vae_config.json [--set k=v ...]`.

Also runs without torchrun as a single process. All logic lives in medgen.training.vae.
"""

import sys

from medgen.training.vae import main

if __name__ == "__main__":
    sys.exit(main())
