"""torchrun entry for the distributed tests: trains like scripts/train_vae.py, then each rank saves its weights.

With MEDGEN_TEST_CRASH_EPOCH=E, rank 1 of the first attempt (TORCHELASTIC_RESTART_COUNT=0) dies at the first
step of epoch E, as a worker lost mid-epoch would. MEDGEN_TEST_SIGNAL: see conftest.install_signal_hook.
"""

import os
import sys
from pathlib import Path

import torch

from medgen.training import vae

crash_epoch = os.environ.get("MEDGEN_TEST_CRASH_EPOCH")
original_step = vae.VAETrainer.train_step


def train_step(self, images, *args):
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if crash_epoch is not None and first_attempt and self.dist.rank == 1 and self.epoch == int(crash_epoch):
        os._exit(3)
    return original_step(self, images, *args)


original_fit = vae.VAETrainer.fit


def fit(self):
    metrics = original_fit(self)
    out = Path(self.cfg.run_dir) / f"weights_rank{self.dist.rank}.pt"
    torch.save({"autoencoder": self.autoencoder.state_dict(), "discriminator": self.discriminator.state_dict(),
                "lr_g": self.opt_g.param_groups[0]["lr"], "lr_d": self.opt_d.param_groups[0]["lr"],
                "epoch": self.epoch}, out)
    return metrics


vae.VAETrainer.train_step = train_step
vae.VAETrainer.fit = fit

if __name__ == "__main__":
    from conftest import install_signal_hook, run_and_record_threads

    install_signal_hook(vae.VAETrainer)
    sys.exit(run_and_record_threads("train-vae"))
