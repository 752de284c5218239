"""medgen's VAE-GAN training step against a loop written the way MONAI's AutoencoderKL tutorial writes it.

Both run in one process on the same model (same initial weights), the same batch and the same losses
(reconstruction + KL + patch-adversarial; the perceptual term is off because its weights are not shipped).
Rounds alternate between the two so that machine noise hits both alike. Before timing, one step of each
from identical weights is compared to show the math is the same.

    python benchmarks/bench_train_step.py --json benchmarks/results/train_step_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from medgen.config import load_config
from medgen.losses.vae import adversarial_loss, kl_loss
from medgen.training.vae import VAETrainer

ROOT = Path(__file__).resolve().parents[1]


class TutorialLoop:
    """The MONAI tutorial's step: discriminator not frozen in the generator step, real and fake through the
    discriminator separately, losses read back with .item() every step."""

    def __init__(self, autoencoder, discriminator, lr, betas, kl_weight, adv_weight):
        self.ae, self.disc = autoencoder, discriminator
        self.opt_g = torch.optim.Adam(self.ae.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=betas)
        self.l1 = torch.nn.L1Loss()
        self.adv = adversarial_loss()
        self.kl_weight, self.adv_weight = kl_weight, adv_weight

    def step(self, images):
        self.opt_g.zero_grad(set_to_none=True)
        reconstruction, z_mu, z_sigma = self.ae(images)
        recons_loss = self.l1(reconstruction.float(), images.float())
        loss_g = recons_loss + self.kl_weight * kl_loss(z_mu, z_sigma)
        logits_fake = self.disc(reconstruction.contiguous().float())[-1]
        generator_loss = self.adv(logits_fake, target_is_real=True, for_discriminator=False)
        loss_g = loss_g + self.adv_weight * generator_loss
        loss_g.backward()
        self.opt_g.step()

        self.opt_d.zero_grad(set_to_none=True)
        logits_fake = self.disc(reconstruction.contiguous().detach())[-1]
        loss_d_fake = self.adv(logits_fake, target_is_real=False, for_discriminator=True)
        logits_real = self.disc(images.contiguous().detach())[-1]
        loss_d_real = self.adv(logits_real, target_is_real=True, for_discriminator=True)
        discriminator_loss = (loss_d_fake + loss_d_real) * 0.5
        (self.adv_weight * discriminator_loss).backward()
        self.opt_d.step()
        return recons_loss.item(), generator_loss.item(), discriminator_loss.item()


def make_trainer(overrides):
    cfg = load_config(ROOT / "vae_config.json", [
        "autoencoder_train.perceptual_weight=0", "cache=none", "num_workers=0", "autoencoder_train.adv_warmup_epochs=0",
        *overrides,
    ])
    return cfg, VAETrainer(cfg, train_items=[], val_items=[])


def max_param_diff(a, b) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="image side (2D)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--channels", default="[32,64,64]")
    p.add_argument("--steps", type=int, default=5, help="steps per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = [f"autoencoder_def.channels={args.channels}", "autoencoder_def.norm_num_groups=16",
                 "autoencoder_def.num_res_blocks=1", "autoencoder_def.attention_levels=[false,false,true]",
                 f"autoencoder_train.patch_size=[{args.size},{args.size}]", f"autoencoder_train.batch_size={args.batch}"]
    cfg, trainer = make_trainer(overrides)
    t = cfg.autoencoder_train
    baseline = TutorialLoop(copy.deepcopy(trainer.autoencoder), copy.deepcopy(trainer.discriminator),
                            trainer.lr_g, tuple(t.betas), t.kl_weight, t.adv_weight)
    images = torch.rand(args.batch, 1, args.size, args.size, generator=torch.Generator().manual_seed(0))

    # Same math: one step each from the same weights and the same latent noise.
    torch.manual_seed(1)
    trainer.train_step(images, adversarial=True)
    torch.manual_seed(1)
    baseline.step(images)
    diff_ae = max_param_diff(trainer.autoencoder, baseline.ae)
    diff_d = max_param_diff(trainer.discriminator, baseline.disc)

    def timed(fn):
        start = time.perf_counter()
        for _ in range(args.steps):
            fn(images)
        return (time.perf_counter() - start) / args.steps

    medgen_step = lambda x: trainer.train_step(x, adversarial=True)  # noqa: E731
    timed(baseline.step), timed(medgen_step)  # warm-up
    base_times, medgen_times = [], []
    for _ in range(args.rounds):
        base_times.append(timed(baseline.step))
        medgen_times.append(timed(medgen_step))
    base_s, medgen_s = statistics.median(base_times), statistics.median(medgen_times)
    result = {
        "benchmark": "vae_gan_train_step",
        "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "image_size": args.size,
        "batch_size": args.batch,
        "channels": json.loads(args.channels),
        "baseline_imgs_per_s": args.batch / base_s,
        "medgen_imgs_per_s": args.batch / medgen_s,
        "ratio": base_s / medgen_s,
        "max_weight_diff_after_one_step": {"autoencoder": diff_ae, "discriminator": diff_d},
    }
    print(f"{'loop':<22}{'images/s':>10}")
    print(f"{'tutorial-style':<22}{result['baseline_imgs_per_s']:>10.2f}")
    print(f"{'medgen':<22}{result['medgen_imgs_per_s']:>10.2f}")
    print(f"ratio medgen/tutorial: {result['ratio']:.2f}x  (weights after one step differ by at most "
          f"{max(diff_ae, diff_d):.1e})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
