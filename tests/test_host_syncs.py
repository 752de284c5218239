"""A training step never makes the host wait for the device (VAE-GAN, WGAN-GP, GAN, latent diffusion).

The whole loop body runs between log intervals: the method's step (forward, backward, clipping, the guarded
optimiser step, EMA) and the loop's bookkeeping (loss sums, skipped-step counts, the stop check). Batches come
from memory, so that only the training loop runs while reads are watched.

On the CPU every host read of a tensor a step makes is caught (``.item()``, ``bool()``, ``.tolist()``, a copy
to the CPU, data-dependent shapes ...): on a GPU each of them waits for the queue. So is every tensor made from
host values (``torch.tensor(1)``): on a GPU it becomes a copy to the device from pageable memory, which waits too
(MONAI's ``PatchAdversarialLoss`` makes its targets that way; medgen's loss does not). With MEDGEN_SYNC_DEVICE=cuda
(``benchmarks/gpu_check.sh``) the steps run on the GPU under ``torch.cuda.set_sync_debug_mode("error")``, which
also catches copies to the device that wait.
"""

from __future__ import annotations

import os
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

from conftest import ROOT, TINY
from medgen.config import load_config
from medgen.training.distributed import DistInfo

DEVICE = torch.device(os.environ.get("MEDGEN_SYNC_DEVICE", "cpu"))
WARMUP = 4  # steps before watching: first-use set-ups (optimiser state, index tensors) happen once

HOST_READS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
    torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.nonzero, torch.nonzero,
    torch.Tensor.masked_select, torch.masked_select, torch.Tensor.unique, torch.unique, torch.equal, torch.allclose,
    torch.is_nonzero, torch.Tensor.__repr__, torch.Tensor.__format__, torch.Tensor.repeat_interleave,
    torch.tensor, torch.as_tensor,  # host values to a new tensor: a waiting copy when it goes to a GPU
}


class HostReads(TorchFunctionMode):
    """Records each call that reads a tensor's values on the host, with where it was made."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []
        self.step = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        read = func in HOST_READS
        if func is torch.Tensor.__getitem__:  # boolean-mask indexing: the result's size depends on the values
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            read = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        if func in (torch.Tensor.to, torch.Tensor.copy_):  # a device tensor copied to the host
            source = args[1] if func is torch.Tensor.copy_ else args[0]
            target = args[0].device if func is torch.Tensor.copy_ else next(
                (torch.device(a) for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))), None)
            read = source.device.type != "cpu" and target is not None and target.type == "cpu"
        if read:
            where = next((f"{f.filename}:{f.lineno}" for f in reversed(traceback.extract_stack()[:-1])
                          if "/torch/" not in f.filename), "?")
            self.calls.append(f"step {self.step}: {getattr(func, '__qualname__', func)} at {where}")
        return func(*args, **kwargs)


class WatchedBatches:
    """A loader over in-memory batches that watches the loop body of every step after the warm-up: from handing
    out a batch to being asked for the next one."""

    def __init__(self, batches: list[dict], reads: HostReads):
        self.batches, self.reads = batches, reads
        self.sampler = self

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        pass

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            watch = i >= WARMUP
            self.reads.step = i + 1
            if watch:
                self.reads.__enter__()
                if DEVICE.type == "cuda":
                    torch.cuda.set_sync_debug_mode("error")
            try:
                yield batch
            finally:
                if watch:
                    if DEVICE.type == "cuda":
                        torch.cuda.set_sync_debug_mode("default")
                    self.reads.__exit__(None, None, None)


def _vae(tmp_path, *extra):
    from medgen.training.vae import VAETrainer

    cfg = load_config(ROOT / "vae_config.json", [*TINY, f"run_dir={tmp_path}", "autoencoder_train.adv_warmup_epochs=0",
                                                 *extra])
    return VAETrainer(cfg, DistInfo(device=DEVICE)), (1, 32, 32)


def _wgan(tmp_path, *extra):
    from medgen.training.wgan import WGANTrainer

    from test_faults import WGAN_TINY

    cfg = load_config(ROOT / "wgan_config.json", [*WGAN_TINY, f"run_dir={tmp_path}", *extra])
    return WGANTrainer(cfg, DistInfo(device=DEVICE)), (1, cfg.wgan_train.image_size, cfg.wgan_train.image_size)


def _ldm(tmp_path, *extra):
    from medgen.training.ldm import LDMTrainer

    from conftest import TINY_LDM
    from test_train_ldm import vae_checkpoint

    vae = vae_checkpoint(tmp_path / "vae.pt")
    cfg = load_config(ROOT / "ldm_config.json", [*TINY_LDM, f"run_dir={tmp_path}", f"autoencoder_checkpoint={vae}", *extra])
    return LDMTrainer(cfg, DistInfo(device=DEVICE)), (2, *cfg.ldm_train.latent_patch_size)


CASES = {
    "vae": (_vae, ()),
    "vae_clip_amp": (_vae, ("autoencoder_train.grad_clip=1.0", "amp=true")),
    "wgan_gp_ema": (_wgan, ("wgan_train.ema_decay=0.9",)),
    "gan_clip": (_wgan, ("wgan_train.method=gan", "wgan_train.grad_clip=1.0", "wgan_train.feature_matching_weight=1.0")),
    "ldm_ema_accum": (_ldm, ("ldm_train.grad_accum_steps=2",)),
    # GPU only (benchmarks/gpu_check.sh): the warm-up steps capture the graphs, the watched steps replay them
    "vae_graphs": (_vae, ("cuda_graphs=true", "amp=true")),
    "ldm_graphs": (_ldm, ("cuda_graphs=true",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_training_step_reads_nothing_back_from_the_device(case, tmp_path):
    build, extra = CASES[case]
    if "cuda_graphs=true" in extra and DEVICE.type != "cuda":
        pytest.skip("graphs turn off on a CPU, where this case is the eager one above")
    trainer, shape = build(tmp_path, *extra, "log_interval=1000")
    batch_size = trainer.train_cfg.batch_size
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(batch_size, *shape, generator=g).to(DEVICE),
                "label": torch.tensor([0, 1] * (batch_size // 2), device=DEVICE)} for _ in range(WARMUP + 4)]
    reads = HostReads()
    trainer._loader = WatchedBatches(batches, reads)
    trainer.train_epoch()
    assert trainer.global_step == len(batches)
    assert reads.calls == [], "\n".join(reads.calls)


def test_the_watch_catches_a_read(tmp_path, monkeypatch):
    """A step that reads its loss back (as the MONAI tutorials' ``.item()`` per step does) is caught."""
    trainer, shape = _vae(tmp_path, "log_interval=1000")
    original = trainer.train_step

    def reading_step(images, *args):
        losses = original(images, *args)
        losses["recon"].item()
        return losses

    monkeypatch.setattr(trainer, "train_step", reading_step)
    reads = HostReads()
    trainer._loader = WatchedBatches([{"image": torch.rand(2, *shape).to(DEVICE)}] * (WARMUP + 2), reads)
    if DEVICE.type == "cuda":
        with pytest.raises(RuntimeError):
            trainer.train_epoch()
        return
    trainer.train_epoch()
    assert len(reads.calls) == 2 and all("TensorBase.item" in c and "test_host_syncs.py" in c for c in reads.calls)


def test_a_latent_diffusion_step_walks_no_module_tree(tmp_path, monkeypatch):
    """After the first step, the LDM step (guarded optimiser step, EMA) never iterates a network's modules: walking
    the shipped UNet's tree costs about half a millisecond each time, more than a GPU step's kernels take to queue."""
    trainer, shape = _ldm(tmp_path, "log_interval=1000")
    batch_size = trainer.train_cfg.batch_size
    latents = torch.rand(batch_size, *shape).to(DEVICE)
    labels = torch.tensor([0, 1] * (batch_size // 2), device=DEVICE)
    trainer.train_step(latents, labels)
    walks = []
    original = torch.nn.Module.named_modules

    def counting(self, *args, **kwargs):
        walks.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "named_modules", counting)
    trainer.train_step(latents, labels)
    trainer.train_step(latents, labels)
    assert walks == []
