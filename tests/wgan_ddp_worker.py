"""torchrun entry for the WGAN distributed tests: trains like scripts/train_wgan.py, then each rank saves its weights.

MEDGEN_TEST_SIGNAL: see conftest.install_signal_hook.
"""

import sys
from pathlib import Path

import torch

from medgen.training import wgan

original_fit = wgan.WGANTrainer.fit


def fit(self):
    metrics = original_fit(self)
    out = Path(self.cfg.run_dir) / f"weights_rank{self.dist.rank}.pt"
    # parameters only: BatchNorm running statistics are per rank (DDP broadcasts rank 0's before each forward)
    torch.save({"generator": {k: p.detach() for k, p in self.generator.named_parameters()},
                "critic": self.critic.state_dict(), "lr_g": self.opt_g.param_groups[0]["lr"],
                "lr_d": self.opt_d.param_groups[0]["lr"], "epoch": self.epoch}, out)
    return metrics


wgan.WGANTrainer.fit = fit

if __name__ == "__main__":
    from conftest import install_signal_hook, run_and_record_threads

    install_signal_hook(wgan.WGANTrainer)
    sys.exit(run_and_record_threads("train-wgan"))
