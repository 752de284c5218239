"""The trainer skeleton every medgen method shares.

:class:`Trainer` owns what is the same for every method: the epoch loop, the validation cadence, checkpoints
(each registered component saves and restores itself), resume rules (also mid-epoch, bitwise exact), stopping
on SIGTERM / SIGINT at a step boundary with ``last.pt`` written, skipping non-finite steps, run info,
TensorBoard, progress (a bar on a terminal, a line per ``log_interval`` in a log file) and the launcher. A method (VAE-GAN, WGAN/GAN, ...) subclasses it and defines only

- :meth:`Trainer.build`: its networks, losses and optimisers, registered with :meth:`Trainer.track`;
- :meth:`Trainer.train_step`: one step on a batch of images, returning detached scalars to log;
- :meth:`Trainer.validate`: its validation measures;

plus a few class attributes (config class, training section, the config keys a resume must match).

The launcher (:func:`launch`) loads the config, joins the process group, finds and checks the data
(:func:`medgen.training.data_check.training_items`) and hands the items to the trainer: trainers never look
for data themselves. One process, one GPU or many (torchrun, DDP): rank 0 alone writes TensorBoard, the
console progress and checkpoints; every rank trains on its own shard of the data each epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from tqdm import tqdm

import medgen
from medgen.config import ConfigError, RunConfig, load_config, to_dict
from medgen.data.datasets import build_dataset, make_train_loader
from medgen.io.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from medgen.io.files import write_text_atomic
from medgen.errors import MedgenError
from medgen.training.distributed import DistInfo, all_gather_objects, all_reduce_max, cleanup, init_distributed, scaled_lr

log = logging.getLogger("medgen.train")


# ---------------------------------------------------------------------------------------------- building blocks
class Precision:
    """Mixed precision for ``amp``: bf16 autocast where the device has it (CPUs, Ampere+ GPUs), else fp16 with
    loss scaling (older GPUs). Disabled, it is plain fp32."""

    def __init__(self, amp: bool, device: torch.device):
        self.enabled = amp
        self.device_type = device.type
        bf16 = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
        self.dtype = torch.bfloat16 if bf16 else torch.float16
        self.needs_scaler = amp and self.dtype == torch.float16

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type if self.device_type == "cuda" else "cpu", enabled=self.needs_scaler)


def wrap_ddp(module: torch.nn.Module, dist_info: DistInfo) -> torch.nn.Module:
    """``module`` under DistributedDataParallel when there are several ranks, else ``module`` itself."""
    if not dist_info.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[dist_info.device.index] if dist_info.device.type == "cuda" else None)


def adam(params, lr: float, betas: Sequence[float], weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam over the trainable ``params``; fused (one kernel per step for all parameters, CPU and CUDA)."""
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=lr, betas=tuple(betas),
                            weight_decay=weight_decay, fused=True)


def lr_scheduler(opt: torch.optim.Optimizer, kind: str, max_epochs: int, T_0: int = 10, T_mult: int = 1):
    """The per-epoch schedule ``kind``: ``constant``, ``cosine`` (to 0 over ``max_epochs``) or
    ``cosine_warm_restarts`` (cycles of ``T_0`` epochs, each ``T_mult`` times longer)."""
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)
    if kind == "cosine_warm_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=T_0, T_mult=T_mult)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


# ---------------------------------------------------------------------------------------------- run files
def resume_path(cfg: RunConfig) -> Path | None:
    """The checkpoint to resume from: ``resume_from`` when set; ``checkpoint_dir`` or ``run_dir/checkpoints/last.pt``
    when ``resume_ckpt`` is true; ``last.pt`` after a torchrun restart; else None. A new run never overwrites
    an existing one."""
    last = cfg.checkpoint_path
    if cfg.resume_ckpt or cfg.resume_from:
        given = cfg.resume_from or cfg.checkpoint_dir
        path = Path(given) if given else last
        if not path.is_file():
            key = "resume_from" if cfg.resume_from else ("checkpoint_dir" if cfg.checkpoint_dir else "resume_ckpt=true")
            raise ConfigError(f"{key}: checkpoint {path} does not exist; set resume_from to the checkpoint file to "
                              "resume from (null: run_dir/checkpoints/last.pt)")
        return path
    if last.is_file():
        if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
            return last
        raise ConfigError(
            f"run_dir={cfg.run_dir} already holds {last}; set resume_ckpt=true to continue it, "
            "or choose another run_dir (nothing was overwritten)"
        )
    return None


def write_run_info(cfg: RunConfig, world_size: int, effective_lr: dict[str, float]) -> None:
    """``run_dir/config.json`` (the resolved config) and ``run_dir/versions.json``."""
    import monai

    run_dir = Path(cfg.run_dir)
    write_text_atomic(run_dir / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    versions = {
        "medgen": medgen.__version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "world_size": world_size,
        "effective_lr": effective_lr,
    }
    write_text_atomic(run_dir / "versions.json", json.dumps(versions, indent=2) + "\n")


# keys that say how to resume, not how to train: a change is not reported
RESUME_ONLY_KEYS = ("resume_ckpt", "checkpoint_dir", "resume_from")


def _config_at(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _differences(saved: Any, now: Any, key: str) -> list[str]:
    """``key=saved (now X)`` for every leaf that differs between two config sections."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for k in sorted(set(saved) | set(now)) for d in _differences(saved.get(k), now.get(k), f"{key}.{k}")]
    return [] if saved == now else [f"{key}={json.dumps(saved)} (this run: {json.dumps(now)})"]


class TrainingInterrupted(MedgenError):
    """Training stopped on SIGTERM / SIGINT at a step boundary, after writing ``last.pt``."""

    all_ranks = False  # every rank stops; one line from rank 0 says so

    def __init__(self, epoch: int, step: int, signum: int, checkpoint: Path):
        self.exit_code = 128 + signum  # 143 for SIGTERM, 130 for SIGINT, as shells report signals
        where = f"at epoch {epoch + 1} step {step}" if step else f"after epoch {epoch}"
        super().__init__(f"interrupted ({signal.Signals(signum).name}) {where}; {checkpoint} holds everything up to "
                         "there; resume with resume_ckpt=true")


class Counters(dict):
    """Named counts a checkpoint keeps (e.g. generator steps); a tracked component like any other."""

    def state_dict(self) -> dict[str, int]:
        return dict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.update(state)


class NonFiniteTraining(MedgenError):
    """Training produced non-finite losses or weights for longer than ``max_nonfinite_steps`` allows."""


def _duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------------------------------- the trainer
class Trainer:
    """The epoch loop, validation cadence, checkpoints, resume, run info and TensorBoard of every method.

    Args:
        cfg: the validated config (:attr:`config_cls`).
        dist_info: this process's rank, world size and device (see :func:`medgen.training.distributed.init_distributed`).
        train_items, val_items: ``{"image": path, "label": class}`` dicts, found and checked by the launcher
            (:func:`medgen.training.data_check.training_items`); :meth:`from_config` does both.
    """

    #: the ``medgen`` sub-command (``train-<name>``) and the name in logs
    name: ClassVar[str] = ""
    #: the config dataclass, the name of its training section and an example override for ``--help``
    config_cls: ClassVar[type]
    section: ClassVar[str]
    example_config: ClassVar[str] = ""
    example_set: ClassVar[str] = ""
    #: dotted config keys a resumed run must share with its checkpoint (the architecture)
    resume_keys: ClassVar[tuple[str, ...]] = ()
    #: the method's name in the log
    method_name: ClassVar[str] = ""
    #: validation measure (higher is better) whose best value writes ``best.pt``; None: no ``best.pt``
    best_metric: ClassVar[str | None] = None

    def __init__(self, cfg, dist_info: DistInfo | None = None, train_items: Sequence[dict] | None = None,
                 val_items: Sequence[dict] | None = None):
        self.cfg, self.dist = cfg, dist_info or DistInfo()
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.train_items: list[dict] | None = None
        self.val_items: list[dict] = []
        self.precision = Precision(cfg.amp, self.dist.device)
        self.epoch, self.step_in_epoch, self.global_step, self.best_value = 0, 0, 0, -math.inf
        self.writer = None
        self.progress_bars = sys.stderr.isatty()  # bars on a terminal; one line per log_interval in a log file
        self._loader = None
        self._stop_signal: int | None = None
        self._step_skipped, self._nonfinite_in_a_row = False, 0
        self.effective_lr: dict[str, float] = {}
        self._components: dict[str, Any] = {}
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._schedulers: list = []
        self.counters = Counters(nonfinite_steps=0)  # methods add their own counts
        self.track(counters=self.counters)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.build()
        torch.manual_seed(cfg.seed + self.dist.rank)  # per-rank randomness from here on (noise, crops)
        if train_items is not None:
            self.set_data(train_items, val_items or [])

    def set_data(self, train_items: Sequence[dict], val_items: Sequence[dict]) -> None:
        """The items to train and validate on (the launcher's, already checked); builds the datasets."""
        self.train_items, self.val_items = list(train_items), list(val_items)
        self.train_ds = build_dataset(self.cfg, self.train_items, self.patch_size, train=True, rank=self.dist.rank)
        self.on_data()

    @classmethod
    def from_config(cls, cfg, dist_info: DistInfo | None = None) -> "Trainer":
        """The trainer on the data ``cfg`` names, found and checked as the launcher does (the bundles' entry).

        The networks are built first, so a config or weights problem stops before the data scan."""
        from medgen.training.data_check import training_items

        trainer = cls(cfg, dist_info)
        resume_path(cfg)  # a missing checkpoint or an existing run is reported before the data scan
        trainer.set_data(*training_items(cfg, trainer.patch_size, trainer.dist))
        return trainer

    # ------------------------------------------------------------------ what a method defines
    def build(self) -> None:
        """Networks, losses, optimisers; register everything a checkpoint must hold with :meth:`track`."""
        raise NotImplementedError

    def train_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training step on a batch in [0, 1] ``(B, C, *spatial)``; returns detached scalar tensors to log
        (a step may return a subset of the names, e.g. a generator that steps every n-th batch)."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """Validation measures (called on every rank; a method may return {} on ranks that do not measure)."""
        raise NotImplementedError

    def batch_extras(self, batch: dict) -> tuple:
        """Further arguments of :meth:`train_step` taken from a loader batch (e.g. class labels); none by default."""
        return ()

    def scalar_tag(self, name: str) -> str:
        """The TensorBoard tag of a :meth:`train_step` scalar."""
        return f"loss/{name}"

    def describe_metrics(self, metrics: dict[str, float]) -> str:
        return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())

    def on_data(self) -> None:
        """After :meth:`set_data`: method-specific datasets (e.g. the validation set)."""

    def on_train_start(self) -> None:
        """Rank 0, once the writer is open: method-specific notes for the log."""

    @staticmethod
    def data_patch_size(cfg) -> tuple[int, ...]:
        """The spatial size images are cropped or resized to (what the data check measures against)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for methods
    @property
    def train_cfg(self):
        return getattr(self.cfg, self.section)

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self.data_patch_size(self.cfg))

    def track(self, **components: Any) -> None:
        """Register what a checkpoint holds: anything with ``state_dict()`` / ``load_state_dict()``, saved
        under its keyword. Optimisers are also logged (``lr/<name>``) and LR schedulers stepped each epoch."""
        for name, comp in components.items():
            self._components[name] = comp
            if isinstance(comp, torch.optim.lr_scheduler.LRScheduler):
                self._schedulers.append(comp)

    def log_lr(self, **optimizers: torch.optim.Optimizer) -> None:
        """Optimisers whose learning rate TensorBoard shows as ``lr/<name>``."""
        self._optimizers.update(optimizers)

    def scaled_lr(self, lr: float) -> float:
        """Effective LR = ``lr`` x world size (the per-process batch stays fixed, so the global batch grows)."""
        return scaled_lr(lr, self.dist.world_size)

    def optimizer_step(self, loss: torch.Tensor, opt, scaler: torch.amp.GradScaler, module: torch.nn.Module,
                       grad_clip: float | None) -> bool:
        """Backward, optional gradient-norm clipping, optimiser step; returns whether the step was taken.

        A non-finite gradient norm skips the step (the gradients are dropped; the weights stay as they were)
        and the training loop counts it. DDP has averaged the gradients, so every rank sees the same norm and
        skips the same steps. Under fp16 the loss scaler skips non-finite steps itself, as it always has.
        """
        scaler.scale(loss).backward()
        if scaler.is_enabled():
            if grad_clip is not None:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
            scaler.step(opt)
            scaler.update()
            return True
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip if grad_clip is not None else math.inf)
        if not torch.isfinite(norm):  # one device sync per step: the decision must precede the update
            opt.zero_grad(set_to_none=True)
            self._step_skipped = True
            return False
        opt.step()
        return True

    # ------------------------------------------------------------------ epochs
    def train_epoch(self) -> dict[str, float]:
        """One pass over this rank's shard (from :attr:`step_in_epoch` when resuming mid-epoch); returns the
        epoch means of every logged scalar. Stops at the next step boundary when a stop signal arrived."""
        max_epochs, batch_size = self.train_cfg.max_epochs, self.train_cfg.batch_size
        for comp in self._components.values():
            if isinstance(comp, torch.nn.Module):
                comp.train()
        if self._loader is None:  # one loader for the run: its workers persist across epochs
            self._loader = make_train_loader(self.cfg, self.train_ds, batch_size, self.epoch, self.dist.rank,
                                             self.dist.world_size, start=self.step_in_epoch)
        self._loader.sampler.set_epoch(self.epoch, start=self.step_in_epoch)
        steps = self.step_in_epoch + len(self._loader)
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        n_images, done, t0 = 0, 0, time.perf_counter()
        desc = f"epoch {self.epoch + 1}/{max_epochs}"
        bar = tqdm(self._loader, desc=desc, initial=self.step_in_epoch, total=steps, leave=False, dynamic_ncols=True,
                   disable=not (self.dist.is_main and self.progress_bars))
        for batch in bar:
            images = batch["image"].to(self.dist.device, non_blocking=True)
            losses = self.train_step(images, *self.batch_extras(batch))
            if self._step_skipped:
                self._count_nonfinite(losses)
                losses = {k: v for k, v in losses.items() if torch.isfinite(v)}  # keep the epoch means finite
            else:
                self._nonfinite_in_a_row = 0
            for k, v in losses.items():
                sums[k] = sums[k] + v.float() if k in sums else v.detach().float().clone()
                counts[k] = counts.get(k, 0) + 1
            n_images += images.shape[0] * self.dist.world_size
            done += 1
            self.global_step += 1
            self.step_in_epoch += 1
            if self.global_step % self.cfg.log_interval == 0 and self.dist.is_main:
                means = self._means(sums, counts)  # one device sync per log interval, not per step
                elapsed = time.perf_counter() - t0
                rate = n_images / elapsed
                first = next(iter(means), None)
                if self.progress_bars:
                    bar.set_postfix({first: f"{means[first]:.4f}", "img_s": f"{rate:.1f}"} if first else {"img_s": f"{rate:.1f}"})
                else:  # a log file: one line per log_interval, no carriage returns
                    eta = elapsed / done * (steps - self.step_in_epoch)
                    log.info("%s step %d/%d: %s, %.1f images/s, epoch ETA %s", desc, self.step_in_epoch, steps,
                             self.describe_metrics(means), rate, _duration(eta))
                self._log_scalars(means, rate)
            if self.step_in_epoch < steps:
                self._stop_if_requested()
        bar.close()
        self.step_in_epoch = 0
        self._step_schedulers()
        means = self._means(sums, counts)
        if self.dist.is_main and counts:
            rate = n_images / (time.perf_counter() - t0)
            self._log_scalars(means, rate, prefix="epoch/")
            log.info("epoch %d/%d: %s, %.1f images/s", self.epoch + 1, max_epochs, self.describe_metrics(means), rate)
        self.on_epoch_end(means)
        return means

    def _count_nonfinite(self, losses: dict[str, torch.Tensor]) -> None:
        """A step skipped for a non-finite gradient: count it, log it, stop after too many in a row."""
        self._step_skipped = False
        self._nonfinite_in_a_row += 1
        self.counters["nonfinite_steps"] += 1
        step = self.global_step + 1
        terms = ", ".join(f"{k}={v.item():g}" for k, v in losses.items() if not torch.isfinite(v)) or "a gradient"
        limit = self.cfg.max_nonfinite_steps
        if self.dist.is_main:
            if self.writer is not None:
                self.writer.add_scalar("train/nonfinite_steps", self.counters["nonfinite_steps"], step)
            log.warning("step %d: non-finite %s; the step was skipped (%d in a row, max_nonfinite_steps=%d)",
                        step, terms, self._nonfinite_in_a_row, limit)
        if self._nonfinite_in_a_row > limit:
            raise NonFiniteTraining(
                f"training diverged: {self._nonfinite_in_a_row} steps in a row up to step {step} (epoch {self.epoch + 1}) "
                f"had a non-finite loss or gradient ({terms}); the checkpoints keep the last finite weights; lower "
                f"{self.section}.lr, set {self.section}.grad_clip, or resume from best.pt"
            )

    def on_epoch_end(self, means: dict[str, float]) -> None:
        """After each epoch's scalars are logged (every rank): method-specific checks."""

    # ------------------------------------------------------------------ stopping on a signal
    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is None and self.dist.is_main:
            log.warning("%s received: stopping at the next step boundary and saving last.pt",
                        signal.Signals(signum).name)
        self._stop_signal = signum

    def _stop_requested(self) -> int:
        """The signal any rank received (0: none), agreed by all ranks so they stop at the same step."""
        if not self.dist.distributed:  # nothing to agree on: no tensor, no device sync
            return self._stop_signal or 0
        flag = torch.tensor([self._stop_signal or 0], device=self.dist.device)
        return int(all_reduce_max(flag).item())

    def _stop_if_requested(self, already_saved: bool = False) -> None:
        signum = self._stop_requested()
        if signum:
            if not already_saved:
                self.save("last.pt")
            raise TrainingInterrupted(self.epoch, self.step_in_epoch, signum, self.ckpt_dir / "last.pt")

    @contextlib.contextmanager
    def _signals_stop_training(self):
        """SIGTERM (Slurm, Kubernetes) and SIGINT (Ctrl-C) ask training to stop at the next step boundary."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @staticmethod
    def _means(sums: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, float]:
        if not sums:
            return {}
        values = torch.stack([sums[k] for k in sums]).tolist()
        return {k: v / counts[k] for k, v in zip(sums, values)}

    def _step_schedulers(self) -> None:
        # A network may not have stepped yet (adversarial warm-up, n_critic above the steps so far); its
        # schedule still advances with the epochs, so torch's warning about the order is moot.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            for scheduler in self._schedulers:
                scheduler.step()

    def _log_scalars(self, means: dict[str, float], rate: float, prefix: str = "") -> None:
        if self.writer is None:
            return
        for name, value in means.items():
            self.writer.add_scalar(prefix + self.scalar_tag(name), value, self.global_step)
        self.writer.add_scalar(f"{prefix}throughput/images_per_s", rate, self.global_step)
        for name, opt in self._optimizers.items():
            self.writer.add_scalar(f"{prefix}lr/{name}", opt.param_groups[0]["lr"], self.global_step)

    def fit(self) -> dict[str, float]:
        """Train to ``max_epochs`` (resuming when asked); returns the last validation measures."""
        t = self.train_cfg
        if self.train_items is None:
            raise RuntimeError("no data: give train_items/val_items, call set_data(), or build the trainer with from_config()")
        resume = resume_path(self.cfg)
        if resume is not None:
            self.load(resume)
            if self.epoch >= t.max_epochs:
                if self.dist.is_main:
                    log.info("%s already holds a run finished at epoch %d (%s.max_epochs=%d); nothing to train: raise "
                             "max_epochs to train on", resume, self.epoch, self.section, t.max_epochs)
                return {}
        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            write_run_info(self.cfg, self.dist.world_size, self.effective_lr)
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            lrs = ", ".join(f"{k} {v:.3g}" for k, v in self.effective_lr.items())
            log.info(
                "training on %d images (%d validation) with %s, world size %d, effective lr %s (lr x %d)%s",
                len(self.train_items), len(self.val_items), self.method_name, self.dist.world_size, lrs, self.dist.world_size,
                f", resumed from {resume} at epoch {self.epoch}" if resume else "",
            )
            self.on_train_start()
        metrics: dict[str, float] = {}
        try:
            with self._signals_stop_training():
                while self.epoch < t.max_epochs:
                    self.train_epoch()
                    self.epoch += 1
                    last = self.epoch == t.max_epochs
                    if self.epoch % t.val_interval == 0 or last:
                        metrics = self.validate()
                        if metrics and self.dist.is_main:
                            log.info("validation after epoch %d: %s", self.epoch, self.describe_metrics(metrics))
                        best = metrics.get(self.best_metric) if self.best_metric else None
                        if best is not None and best > self.best_value:  # every rank holds the reduced measure
                            self.best_value = best
                            self.save("best.pt")
                    saved = self.epoch % self.cfg.checkpoint_interval == 0 or last
                    if saved:
                        self.save("last.pt")
                    if not last:
                        self._stop_if_requested(already_saved=saved)
        finally:
            if self.writer is not None:
                self.writer.close()
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Every tracked component's own state, the progress counters, the config and the versions."""
        state = {name: comp.state_dict() for name, comp in self._components.items()}
        state.update(epoch=self.epoch, step_in_epoch=self.step_in_epoch, global_step=self.global_step, world_size=self.dist.world_size,
                     config=to_dict(self.cfg), medgen_version=medgen.__version__)
        if self.best_metric:
            state[f"best_{self.best_metric}"] = self.best_value
        return state

    def save(self, name: str = "last.pt") -> None:
        """Every rank contributes its RNG state; rank 0 writes ``run_dir/checkpoints/<name>`` atomically.
        Weights with a non-finite value are never written: the previous file stays."""
        bad = [n for n, comp in self._components.items() if isinstance(comp, torch.nn.Module)
               and not all(torch.isfinite(t).all() for t in comp.state_dict().values() if t.is_floating_point())]
        if int(all_reduce_max(torch.tensor([len(bad)], device=self.dist.device)).item()):
            raise NonFiniteTraining(f"{', '.join(bad) or 'a network on another rank'} holds non-finite weights; "
                                    f"{self.ckpt_dir / name} was not overwritten; lower {self.section}.lr or set "
                                    f"{self.section}.grad_clip, and resume from the last checkpoint")
        rngs = all_gather_objects(rng_state())
        if self.dist.is_main:
            save_checkpoint({**self.state_dict(), "rng": rngs}, self.ckpt_dir / name)

    def load(self, path: str | Path) -> None:
        """Restore everything from a checkpoint written by :meth:`save`, and this rank's RNG states."""
        try:
            ckpt = load_checkpoint(path, map_location=self.dist.device)
        except CheckpointError as e:  # truncated or damaged: offer the other checkpoint of the run
            others = [p for p in (self.ckpt_dir / "best.pt", self.ckpt_dir / "last.pt") if p != Path(path) and p.is_file()]
            hint = f"; to go on from the last good state, set resume_from={others[0]}" if others else ""
            raise CheckpointError(f"{e}{hint}") from None
        self.check_resume(ckpt, Path(path))
        for name, comp in self._components.items():
            if name in ckpt:  # only Counters may be absent (checkpoints written before they existed)
                comp.load_state_dict(ckpt[name])
        self.epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        self.step_in_epoch = int(ckpt.get("step_in_epoch", 0))
        if self.best_metric:
            self.best_value = float(ckpt.get(f"best_{self.best_metric}", -math.inf))
        self._apply_config_lr()
        changed = [d for key in sorted(set(ckpt.get("config") or {}) | set(to_dict(self.cfg))) if key not in RESUME_ONLY_KEYS
                   for d in _differences((ckpt.get("config") or {}).get(key), to_dict(self.cfg).get(key), key)]
        if changed and self.dist.is_main:
            log.info("resuming %s with changed settings: %s", path, "; ".join(changed))
        rngs = ckpt.get("rng", [])
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        elif self.dist.is_main:
            log.warning("%s was written by %d processes, this run has %d: random streams restart", path, len(rngs), self.dist.world_size)

    def _apply_config_lr(self) -> None:
        """After a load: the config's (effective) learning rates, at the schedule's current position. The
        optimiser's moments are kept; only the rates change."""
        for name, opt in self._optimizers.items():
            new = self.effective_lr.get(name)
            schedulers = [sch for sch in self._schedulers if sch.optimizer is opt]
            for i, group in enumerate(opt.param_groups):
                old = group.get("initial_lr", group["lr"])
                if new is None or old == new or old == 0:
                    continue
                ratio = new / old
                group["lr"] *= ratio
                group["initial_lr"] = new
                for sch in schedulers:
                    sch.base_lrs[i] = new
                    if getattr(sch, "_last_lr", None):
                        sch._last_lr[i] *= ratio

    def check_resume(self, ckpt: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint of another architecture or another set of components, naming what differs."""
        saved, now = ckpt.get("config") or {}, to_dict(self.cfg)
        diffs = [d for key in self.resume_keys if _config_at(saved, key) is not None
                 for d in _differences(_config_at(saved, key), _config_at(now, key), key)]
        if diffs:
            raise ConfigError(f"{path} was trained with {'; '.join(diffs)}; resume with the same settings or start a new run_dir")
        missing = [name for name, comp in self._components.items()
                   if (name not in ckpt or ckpt[name] is None) and not isinstance(comp, Counters)]
        extra = [name for name in ckpt if name not in self._components and isinstance(ckpt[name], dict)
                 and name not in ("config", "rng")]
        if missing or extra:
            raise ConfigError(
                f"{path} {'lacks ' + ', '.join(missing) if missing else 'also holds ' + ', '.join(extra)}, which this "
                f"{self.name} run {'needs' if missing else 'does not train'}; resume with the settings it was trained with"
            )


# ---------------------------------------------------------------------------------------------- the launcher
def add_arguments(parser: argparse.ArgumentParser, trainer_cls: type[Trainer]) -> argparse.ArgumentParser:
    """The training command line: a config file and ``--set`` overrides."""
    parser.add_argument("config", help=f"config JSON file, e.g. {trainer_cls.example_config}")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override a config key (dotted path, JSON value), e.g. --set {trainer_cls.example_set}",
    )
    return parser


def launch(config: str | Path, overrides: Sequence[str], trainer_cls: type[Trainer]) -> dict[str, float]:
    """Load the config, join the process group, find and check the data, train. Errors a user can fix are
    :class:`medgen.errors.MedgenError`; the caller (the CLI) turns them into one line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(config, list(overrides), cls=trainer_cls.config_cls)
    dist_info = init_distributed(cfg.backend)
    if not dist_info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    trainer = None
    try:
        trainer = trainer_cls.from_config(cfg, dist_info)
        return trainer.fit()
    finally:
        trainer = None  # its DDP wrappers hold the process group: release them before destroying it
        cleanup()
