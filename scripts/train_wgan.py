#!/usr/bin/env python
"""Train a WGAN-GP or GAN: `torchrun --nproc_per_node=N scripts/train_wgan.py wgan_config.json [--set k=v ...]`.

Also runs without torchrun as a single process. All logic lives in medgen.training.wgan.
"""

import sys

from medgen.training.wgan import main

if __name__ == "__main__":
    sys.exit(main())
