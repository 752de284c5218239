"""A fourth method on the trainer skeleton alone: a plain autoencoder (L1 + KL, no discriminator). Run as a
script (`plain_autoencoder.py CONFIG --set K=V ...`) it trains like `medgen train-vae`, for the fault tests."""

import sys

import torch

from medgen.config import VAEConfig
from medgen.data.datasets import build_dataset, make_val_loader
from medgen.losses.vae import kl_loss
from medgen.metrics import psnr
from medgen.models.autoencoder import build_autoencoder
from medgen.training.base import Trainer, wrap_ddp
from medgen.training.distributed import all_reduce_sum


class PlainAutoencoderTrainer(Trainer):
    name, method_name, config_cls = "plain", "plain autoencoder", VAEConfig
    resume_keys, best_metric = ("autoencoder_def",), "psnr"
    data_patch_size = staticmethod(lambda cfg: tuple(cfg.autoencoder_train.patch_size))

    def build(self) -> None:
        self.autoencoder = build_autoencoder(self.cfg.autoencoder_def).to(self.dist.device)
        self.track(autoencoder=self.autoencoder)
        self.opt, _, self.scaler = self.build_optimizer("autoencoder", self.autoencoder, self.train_cfg.lr)
        self.ae_ddp = wrap_ddp(self.autoencoder, self.dist)

    def train_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.train_cfg
        with self.precision.autocast():
            recon, z_mu, z_sigma = self.ae_ddp(images)
            l1, kl = (recon.float() - images).abs().mean(), kl_loss(z_mu.float(), z_sigma.float())
        self.optimizer_step(l1 + t.kl_weight * kl, self.opt, self.scaler, self.autoencoder, t.grad_clip)
        return {"recon": l1.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        mine = self.val_items[self.dist.rank::self.dist.world_size]
        sums = torch.zeros(2, dtype=torch.float64, device=self.dist.device)
        self.autoencoder.eval()
        for batch in make_val_loader(self.cfg, build_dataset(self.cfg, mine, self.patch_size, False), 2):
            x = batch["image"].to(self.dist.device)
            sums[0] += psnr(self.autoencoder.reconstruct(x).clamp(0, 1), x, reduction="none").sum().double()
            sums[1] += x.shape[0]
        self.autoencoder.train()
        return {"psnr": (all_reduce_sum(sums)[0] / sums[1].clamp(min=1)).item()}


if __name__ == "__main__":
    from conftest import run_trainer_script

    sys.exit(run_trainer_script(PlainAutoencoderTrainer))
