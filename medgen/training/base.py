"""The trainer skeleton every medgen method shares.

:class:`Trainer` owns what is the same for every method: the epoch loop, the validation cadence and its
TensorBoard scalars, checkpoints (:class:`medgen.training.checkpointer.Checkpointer`: each registered component
saves and restores itself), resume rules (also mid-epoch, bitwise exact), stopping on SIGTERM / SIGINT at a step
boundary with ``last.pt`` written, optimisers with their schedules and loss scalers, gradient accumulation,
an EMA of a network for sampling, skipping non-finite steps, run info and progress (a bar on a terminal, a line
per ``log_interval`` in a log file). A method (VAE-GAN, WGAN/GAN, latent diffusion, ...) subclasses it and
defines only

- :meth:`Trainer.build`: its networks and losses, its optimisers from :meth:`Trainer.build_optimizer`, anything
  else a checkpoint must hold registered with :meth:`Trainer.track`;
- :meth:`Trainer.train_step`: one step on a batch of images, returning detached scalars to log;
- :meth:`Trainer.validate`: its validation measures (logged as ``val/<name>``);

plus a few class attributes (config class, the config keys a resume must match, the measure that picks
``best.pt``).

:func:`launch` loads the config, joins the process group, finds and checks the data
(:func:`medgen.training.data_check.training_items`) and hands the items to the trainer: trainers never look
for data themselves. One process, one GPU or many (torchrun, DDP): rank 0 alone writes TensorBoard, the
console progress and checkpoints; every rank trains on its own shard of the data each epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from time import monotonic
from typing import Any, ClassVar, Sequence

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

import medgen
from medgen.config import RunConfig, load_config, to_dict
from medgen.data.datasets import build_dataset, make_train_loader
from medgen.errors import MedgenError
from medgen.io.discovery import discover_items
from medgen.io.files import write_text_atomic
from medgen.training.checkpointer import Checkpointer, NonFiniteTraining, Record, changed_settings, resume_path
from medgen.training.distributed import DistInfo, agreed_max, broadcast_object, cleanup, init_distributed, scaled_lr
from medgen.training.graphs import CudaGraphs, graphs_unavailable
from medgen.training.step_state import ScalarSums, SkippedSteps, any_set, ema_on_device, ema_update, guarded_step

log = logging.getLogger("medgen.train")


# ---------------------------------------------------------------------------------------------- building blocks
class Precision:
    """Mixed precision for ``amp``: bf16 autocast where the device has it (CPUs, Ampere+ GPUs), else fp16 with
    loss scaling (older GPUs). Disabled, it is plain fp32."""

    def __init__(self, amp: bool, device: torch.device):
        self.enabled = amp
        self.cache = True  # autocast's cache of cast weights (off under CUDA graphs, which cannot capture it)
        self.device_type = device.type
        bf16 = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
        self.dtype = torch.bfloat16 if bf16 else torch.float16
        self.needs_scaler = amp and self.dtype == torch.float16

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled, cache_enabled=self.cache)

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
    ``cosine_warm_restarts`` (cycles of ``T_0`` epochs, each ``T_mult`` times longer). ``warmup_cosine`` is set
    per step by the trainer (:func:`warmup_cosine`); its per-epoch schedule is constant."""
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)
    if kind == "cosine_warm_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=T_0, T_mult=T_mult)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def warmup_cosine(step: int, warmup_steps: int, progress: float) -> float:
    """The learning-rate factor of ``warmup_cosine``: a linear rise over the first ``warmup_steps`` steps, then a
    cosine decay to 0 as the run's ``progress`` (0 at the start, 1 at its end) goes on."""
    rise = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return rise * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


class AccumulatedGrads:
    """The gradients summed so far in an accumulation group: saved so that a run stopped mid-group resumes exactly."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.grad.detach().clone() for n, p in self.module.named_parameters() if p.grad is not None}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n, p in self.module.named_parameters():
            p.grad = state[n].to(p.device, p.dtype) if n in state else None


# ---------------------------------------------------------------------------------------------- run files
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


def position(epoch: int, step: int) -> str:
    """Where a run stands, as the interrupt and resume messages say it: ``epoch 2 step 3`` (1-based epoch,
    steps done in it) or ``after epoch 2``."""
    return f"epoch {epoch + 1} step {step}" if step else f"after epoch {epoch}"


def at_position(epoch: int, step: int) -> str:
    """:func:`position` after ``at`` when inside an epoch: ``at epoch 2 step 3`` or ``after epoch 2``."""
    return f"at {position(epoch, step)}" if step else position(epoch, step)


def _duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TrainingInterrupted(MedgenError):
    """Training stopped on SIGTERM / SIGINT at a step boundary, after writing ``last.pt``."""

    all_ranks = False  # every rank stops; one line from rank 0 says so

    def __init__(self, epoch: int, step: int, signum: int, checkpoint: Path):
        self.exit_code = 128 + signum  # 143 for SIGTERM, 130 for SIGINT, as shells report signals
        super().__init__(f"interrupted ({signal.Signals(signum).name}) {at_position(epoch, step)}; {checkpoint} holds everything up to "
                         "there; resume with resume_ckpt=true")


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
    #: the config dataclass (it names the training section, ``config_cls.section``)
    config_cls: ClassVar[type]
    #: the sub-command's help, an example config file and an example override
    command_help: ClassVar[str] = ""
    example_config: ClassVar[str] = ""
    example_set: ClassVar[str] = ""
    #: dotted config keys a resumed run must share with its checkpoint (the architecture)
    resume_keys: ClassVar[tuple[str, ...]] = ()
    #: the method's name in the log
    method_name: ClassVar[str] = ""
    #: validation measure whose best value writes ``best.pt``; None: no ``best.pt``
    best_metric: ClassVar[str | None] = None
    #: True when the lower ``best_metric`` is the better (a loss), False when the higher (PSNR)
    best_lower: ClassVar[bool] = False
    #: why ``cuda_graphs=true`` does not apply to this method (None: its step calls its networks through them)
    no_cuda_graphs: ClassVar[str | None] = None

    def __init__(self, cfg, dist_info: DistInfo | None = None, train_items: Sequence[dict] | None = None,
                 val_items: Sequence[dict] | None = None):
        self.cfg, self.dist = cfg, dist_info or DistInfo()
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.checkpointer = Checkpointer(self.ckpt_dir, self.dist, self.name, cfg.section, self.resume_keys)
        self.train_items: list[dict] | None = None
        self.val_items: list[dict] = []
        self.precision = Precision(cfg.amp, self.dist.device)
        self.epoch, self.step_in_epoch, self.global_step, self.best_value = 0, 0, 0, -math.inf
        self.steps_in_epoch = 0  # the current epoch's length in steps (known once it starts)
        self.writer = None
        self.progress_bars = sys.stderr.isatty()  # bars on a terminal; one line per log_interval in a log file
        self._loader = None
        self._stop_signal: int | None = None
        self._skip_flags: list[torch.Tensor] = []  # this step's optimiser skip flags (on the device)
        self._skipped = SkippedSteps(self.dist.device)
        self._skipped_seen = 0  # skipped steps already added to counters["nonfinite_steps"]
        self._scalars = ScalarSums()  # this epoch's logged scalars
        # seconds trained by earlier processes of this run (from the checkpoint), and when this one started
        self.train_time, self._fit_start = 0.0, None
        self.agreed_time = 0.0  # elapsed_time as every rank agreed at the last step boundary
        self.out_of_time = False  # max_time was reached (at a step boundary every rank agrees on)
        self.effective_lr: dict[str, float] = {}
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._schedulers: list = []
        self.ema: AveragedModel | None = None
        self._ema_decay = 0.0
        self._ema_source: torch.nn.Module | None = None
        self.counters = Record(nonfinite_steps=0)  # methods add their own counts
        self.track(counters=self.counters)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.build()
        if cfg.compile:
            for module in self.compiled_networks():
                module.compile()  # in place: the same parameters and state_dict keys, so checkpoints do not change
        why_not = self.no_cuda_graphs or graphs_unavailable(self.dist.device, self.dist.distributed, self.grad_accum_steps,
                                                            cfg.compile)
        self.graphs = CudaGraphs(cfg.cuda_graphs and why_not is None)  # call a step's network through self.graphs
        self.precision.cache = not self.graphs.enabled
        if cfg.cuda_graphs and self.dist.is_main:
            if why_not:
                log.warning("cuda_graphs=true is off for this run: %s", why_not)
            else:
                log.info("cuda_graphs: each network's forward and backward are captured at the first step of each "
                         "input shape and replayed from CUDA graphs")
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

        The cheapest checks come first: the checkpoint to resume and the data folders, then the networks (and
        their pretrained weights), then the scan that reads every image."""
        from medgen.training.data_check import training_items

        resume_path(cfg)  # a missing checkpoint or an existing run
        found = discover_items(cfg)  # missing or empty data folders
        trainer = cls(cfg, dist_info)
        trainer.set_data(*training_items(cfg, trainer.checked_size(cfg), trainer.dist, found))
        return trainer

    # ------------------------------------------------------------------ what a method defines
    def build(self) -> None:
        """Networks, losses, optimisers (:meth:`build_optimizer`); register anything else a checkpoint must hold
        with :meth:`track`."""
        raise NotImplementedError

    def train_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training step on a batch in [0, 1] ``(B, C, *spatial)``; returns detached scalar tensors to log
        (a step may return a subset of the names, e.g. a generator that steps every n-th batch)."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """Validation measures (called on every rank; a method may return {} on ranks that do not measure).
        Rank 0 logs each as ``val/<name>``; a method writes only its images."""
        raise NotImplementedError

    def compiled_networks(self) -> list[torch.nn.Module]:
        """The networks whose forward ``compile=true`` compiles (those a step runs forward and backward)."""
        return []

    @staticmethod
    def data_patch_size(cfg) -> tuple[int, ...]:
        """The spatial size images are cropped or resized to."""
        raise NotImplementedError

    @classmethod
    def checked_size(cls, cfg) -> tuple[int, ...] | None:
        """The size every image must reach (what the data check measures against): the patch in ``crop`` mode;
        None in ``resize`` mode, where any size is brought to it."""
        return None if cfg.patch_mode == "resize" else tuple(cls.data_patch_size(cfg))

    @classmethod
    def pretrained_networks(cls, cfg) -> list[tuple[str, str | None]]:
        """The pretrained networks ``cfg`` trains with, each as (what it is, why it cannot load here or None);
        checked before the networks are built, and by ``medgen check-data``."""
        return []

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

    def on_epoch_end(self, means: dict[str, float]) -> None:
        """After each epoch's scalars are logged (every rank): method-specific checks."""

    def stop_reason(self, metrics: dict[str, float]) -> str | None:
        """After a validation and its checkpoint: why the run should end there (logged), or None to go on; rank
        0's answer holds for every rank."""
        return None

    # ------------------------------------------------------------------ helpers for methods
    @property
    def train_cfg(self):
        """The config's training section (``autoencoder_train``, ``wgan_train``, ...)."""
        return getattr(self.cfg, self.cfg.section)

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self.data_patch_size(self.cfg))

    def track(self, **components: Any) -> None:
        """Register what a checkpoint holds: anything with ``state_dict()`` / ``load_state_dict()``, saved
        under its keyword. LR schedulers are also stepped each epoch."""
        self.checkpointer.track(**components)
        self._schedulers += [c for c in components.values() if isinstance(c, torch.optim.lr_scheduler.LRScheduler)]

    def scaled_lr(self, lr: float) -> float:
        """Effective LR = ``lr`` x world size (the per-process batch stays fixed, so the global batch grows)."""
        return scaled_lr(lr, self.dist.world_size)

    def build_optimizer(self, name: str, module: torch.nn.Module, lr: float, suffix: str = ""):
        """Adam over ``module``'s trainable parameters at ``lr`` x world size with the training section's betas,
        weight decay and LR schedule, and a loss scaler for fp16. Tracked as ``opt<suffix>``, ``sched<suffix>``,
        ``scaler<suffix>`` (and ``accumulated_grads<suffix>`` when the section accumulates gradients); the
        rate is logged as ``lr/<name>``. Returns ``(optimizer, scheduler, scaler)``."""
        t = self.train_cfg
        self.effective_lr[name] = self.scaled_lr(lr)
        opt = adam(module.parameters(), self.effective_lr[name], t.betas, getattr(t, "weight_decay", 0.0))
        sched = lr_scheduler(opt, t.lr_scheduler, t.max_epochs, getattr(t, "T_0", 10), getattr(t, "T_mult", 1))
        scaler = self.precision.scaler()
        self.track(**{f"opt{suffix}": opt, f"sched{suffix}": sched, f"scaler{suffix}": scaler})
        if hasattr(t, "grad_accum_steps"):
            self.track(**{f"accumulated_grads{suffix}": AccumulatedGrads(module)})
        self._optimizers[name] = opt
        return opt, sched, scaler

    def build_ema(self, module: torch.nn.Module, decay: float | None) -> None:
        """An exponential moving average of ``module``'s weights and buffers (the BatchNorm statistics must match
        the averaged weights), tracked as ``ema`` and updated after each optimiser step of ``module``; None when
        ``decay`` is None. :attr:`sampling_network` is the network samples and measures come from."""
        self._ema_source = module
        if decay is not None:
            # updated by step_state.ema_update (same values, no host reads); built as AveragedModel for its checkpoints
            self.ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
            ema_on_device(self.ema, self.dist.device)
            self._ema_decay = decay
            self.track(ema=self.ema)

    @property
    def sampling_network(self) -> torch.nn.Module:
        """The network samples and validation come from: the EMA copy when there is one (:meth:`build_ema`)."""
        return self.ema.module if self.ema is not None else self._ema_source

    @property
    def grad_accum_steps(self) -> int:
        return getattr(self.train_cfg, "grad_accum_steps", 1)

    @property
    def stepping(self) -> bool:
        """Whether this step ends its gradient-accumulation group (always, without accumulation; the last
        step of an epoch always does)."""
        k, step = self.grad_accum_steps, self.step_in_epoch + 1
        return k == 1 or step % k == 0 or step >= self.steps_in_epoch

    def accumulating(self, *ddp_modules: torch.nn.Module):
        """Context for a step's forward and backward: DDP's gradient all-reduce is skipped while the step only
        accumulates (it runs once, on the group's last step)."""
        stack = contextlib.ExitStack()
        if not self.stepping:
            for m in ddp_modules:
                if hasattr(m, "no_sync"):
                    stack.enter_context(m.no_sync())
        return stack

    def optimizer_step(self, loss: torch.Tensor, opt, scaler: torch.amp.GradScaler, module: torch.nn.Module,
                       grad_clip: float | None) -> bool:
        """Backward, and at the end of an accumulation group optional gradient-norm clipping, the optimiser
        step, clearing the gradients and the EMA update; returns whether the optimiser was called (False while
        a group accumulates).

        The loss is divided by ``grad_accum_steps`` so a group's gradient is the mean of its steps. A non-finite
        gradient norm skips the step on the device (:func:`medgen.training.step_state.guarded_step`: weights,
        optimiser moments, step counts and the EMA stay as they were; the gradients are dropped) and the training
        loop counts it at its next check (see :meth:`train_epoch`). DDP has averaged the gradients, so every rank
        sees the same norm and skips the same steps. Under fp16 the loss scaler skips non-finite steps itself
        (its scale calibration: not counted). No host read of a device tensor happens here.
        """
        k = self.grad_accum_steps
        scaler.scale(loss / k if k > 1 else loss).backward()
        if not self.stepping:
            return False
        skipped = None
        # the optimiser's own list: the parameters that train (the others have no gradients), without walking
        # the module tree, which takes a deep network half a millisecond per step
        params = [p for group in opt.param_groups for p in group["params"]]
        if scaler.is_enabled():
            if grad_clip is not None:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            scaler.step(opt)  # a fused optimiser takes the scaler's found_inf on the device: no host read
            scaler.update()
        else:
            skipped = guarded_step(opt, params, grad_clip)
            self._skip_flags.append(skipped)
        opt.zero_grad(set_to_none=True)
        if self.ema is not None and module is self._ema_source:
            ema_update(self.ema, module, self._ema_decay, skipped)
        return True

    # ------------------------------------------------------------------ epochs
    def train_epoch(self) -> dict[str, float]:
        """One pass over this rank's shard (from :attr:`step_in_epoch` when resuming mid-epoch); returns the
        epoch means of every logged scalar. Stops at the next step boundary when a stop signal arrived."""
        max_epochs, batch_size = self.train_cfg.max_epochs, self.train_cfg.batch_size
        for comp in self.checkpointer.components.values():
            if isinstance(comp, torch.nn.Module):
                comp.train()
        if self._loader is None:  # one loader for the run: its workers persist across epochs
            self._loader = make_train_loader(self.cfg, self.train_ds, batch_size, self.epoch, self.dist.rank,
                                             self.dist.world_size, start=self.step_in_epoch)
        self._loader.sampler.set_epoch(self.epoch, start=self.step_in_epoch)
        steps = self.steps_in_epoch = self.step_in_epoch + len(self._loader)
        self._scalars = ScalarSums()
        n_images, done, t0 = 0, 0, time.perf_counter()
        desc = f"epoch {self.epoch + 1}/{max_epochs}"
        bar = tqdm(self._loader, desc=desc, initial=self.step_in_epoch, total=steps, leave=False, dynamic_ncols=True,
                   disable=not (self.dist.is_main and self.progress_bars))
        for batch in bar:
            images = batch["image"].to(self.dist.device, non_blocking=True)
            self._schedule_lr()
            self._skip_flags = []
            self._scalars.add(self.train_step(images, *self.batch_extras(batch)))
            skipped = any_set(self._skip_flags)
            if skipped is not None:  # the steps that called an optimiser count (not those that only accumulate)
                self._skipped.update(skipped, self.global_step + 1)
            n_images += images.shape[0] * self.dist.world_size
            done += 1
            self.global_step += 1
            self.step_in_epoch += 1
            if self.global_step % self.cfg.log_interval == 0:
                self._check_nonfinite()  # every rank: they skip the same steps, so they stop together
            if self.global_step % self.cfg.log_interval == 0 and self.dist.is_main:
                means = self._scalars.means()  # host reads once per log interval, none in between
                elapsed = time.perf_counter() - t0
                rate = n_images / elapsed
                first = next(iter(means), None)
                if self.progress_bars:
                    bar.set_postfix({first: f"{means[first]:.4f}", "img_s": f"{rate:.1f}"} if first else {"img_s": f"{rate:.1f}"})
                elif self.step_in_epoch < steps:  # a log file: one line per log_interval (the epoch's line ends it)
                    eta = elapsed / done * (steps - self.step_in_epoch)
                    log.info("%s step %d/%d: %s, %.1f images/s, epoch ETA %s", desc, self.step_in_epoch, steps,
                             self.describe_metrics(means), rate, _duration(eta))
                self._log_scalars(means, rate)
            if self.step_in_epoch < steps and self._stop_if_requested():
                self.out_of_time = True
                break
        bar.close()
        self._check_nonfinite()
        if self.out_of_time:  # the epoch goes on when the run is resumed: its schedules stay where they are
            return self._scalars.means()
        self.step_in_epoch = 0
        self._step_schedulers()
        means = self._scalars.means()
        if self.dist.is_main and means:
            rate = n_images / (time.perf_counter() - t0)
            self._log_scalars(means, rate, prefix="epoch/")
            log.info("epoch %d/%d: %s, %.1f images/s", self.epoch + 1, max_epochs, self.describe_metrics(means), rate)
        self.on_epoch_end(means)
        return means

    def _check_nonfinite(self, stop: bool = True) -> None:
        """Read the skipped-step counts (one host read; :meth:`train_epoch` calls it every ``log_interval`` steps
        and at the end of each epoch): add the steps skipped since the last check to the ``nonfinite_steps``
        counter, warn about them, and with ``stop`` raise :class:`NonFiniteTraining` when a run of more than
        ``max_nonfinite_steps`` skipped steps in a row happened since the last check. So a run stops at the first
        check at or after the step that made it too long: that step itself with ``log_interval=1``, at most
        ``log_interval - 1`` steps later otherwise, and at the latest at the end of its epoch."""
        run, total, longest, longest_at = self._skipped.read()
        new, self._skipped_seen = total - self._skipped_seen, total
        if not new:
            return
        self.counters["nonfinite_steps"] += new
        bad = self._scalars.nonfinite()
        terms = ", ".join(f"{k}={v:g}" for k, v in bad.items()) or "a gradient"
        limit = self.cfg.max_nonfinite_steps
        if self.dist.is_main:
            if self.writer is not None:
                self.writer.add_scalar("train/nonfinite_steps", self.counters["nonfinite_steps"], self.global_step)
            log.warning("step %d: non-finite %s; %d step(s) skipped since the last check (%d in a row now, "
                        "max_nonfinite_steps=%d)", self.global_step, terms, new, run, limit)
        if stop and longest > limit:
            section = self.cfg.section
            later = f"; stopped at step {self.global_step}, the next check" if longest_at != self.global_step else ""
            raise NonFiniteTraining(
                f"training diverged: {longest} steps in a row up to step {longest_at} (epoch {self.epoch + 1}) "
                f"had a non-finite loss or gradient ({terms}){later}; the checkpoints keep the last finite weights; "
                f"lower {section}.lr, set {section}.grad_clip, or resume from best.pt"
            )

    # ------------------------------------------------------------------ stopping on a signal
    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is None and self.dist.is_main:
            log.warning("%s received: stopping at the next step boundary and saving last.pt",
                        signal.Signals(signum).name)
        self._stop_signal = signum

    @property
    def elapsed_time(self) -> float:
        """Seconds this run has trained (validation and checkpoints included), over all its processes so far."""
        return self.train_time + (monotonic() - self._fit_start if self._fit_start is not None else 0.0)

    def _stop_requested(self) -> tuple[int, bool]:
        """The signal any rank received (0: none) and whether ``max_time`` is spent, agreed by all ranks in one
        all-reduce so they stop at the same step. Rank 0's clock is the run's: its elapsed time is what every
        rank keeps in :attr:`agreed_time` (the time the learning-rate schedule reads)."""
        elapsed = self.elapsed_time if self.dist.is_main else 0.0
        signum = self._stop_signal or 0
        if self.dist.distributed:  # on the host (a CPU group): the device queue is never waited for
            signum, elapsed = agreed_max(signum, elapsed)
        self.agreed_time = elapsed
        budget = self.cfg.max_time_seconds
        return int(signum), budget is not None and elapsed >= budget

    def _stop_if_requested(self, already_saved: bool = False) -> bool:
        """Raise :class:`TrainingInterrupted` (after writing ``last.pt``) when a stop signal arrived; returns
        whether ``max_time`` is spent."""
        signum, time_up = self._stop_requested()
        if signum:
            if not already_saved:
                self._check_nonfinite(stop=False)  # the counter in last.pt includes this epoch's skipped steps
                self.save("last.pt")
            raise TrainingInterrupted(self.epoch, self.step_in_epoch, signum, self.ckpt_dir / "last.pt")
        return time_up

    def _schedule_lr(self) -> None:
        """``warmup_cosine``: every optimiser's rate for this step, from the steps done and the run's progress
        (the larger of the share of ``max_epochs`` and the share of ``max_time`` done)."""
        t = self.train_cfg
        if getattr(t, "lr_scheduler", None) != "warmup_cosine":
            return
        progress = self.global_step / max(1, t.max_epochs * self.steps_in_epoch)
        budget = self.cfg.max_time_seconds
        if budget is not None:
            progress = max(progress, self.agreed_time / budget)
        factor = warmup_cosine(self.global_step, getattr(t, "lr_warmup_steps", 0), progress)
        for name, opt in self._optimizers.items():
            for group in opt.param_groups:
                group["lr"] = self.effective_lr[name] * factor

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

    def _validate(self) -> dict[str, float]:
        """:meth:`validate`, its measures logged (``val/<name>`` in TensorBoard, one line) and ``best.pt`` kept."""
        metrics = self.validate()
        if metrics and self.dist.is_main:
            log.info("validation %s: %s", at_position(self.epoch, self.step_in_epoch), self.describe_metrics(metrics))
            if self.writer is not None:
                for name, value in metrics.items():
                    self.writer.add_scalar(f"val/{name}", value, self.global_step)
        best = metrics.get(self.best_metric) if self.best_metric else None
        if best is not None and self._best_sign * best > self.best_value:  # every rank holds the reduced measure
            self.best_value = self._best_sign * best
            self.save("best.pt")
        return metrics

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
                             "max_epochs to train on", resume, self.epoch, self.cfg.section, t.max_epochs)
                return {}
            budget = self.cfg.max_time_seconds
            if budget is not None and self.train_time >= budget:
                if self.dist.is_main:
                    log.info("%s has trained %s, all of max_time=%s; nothing to train: raise max_time to train on",
                             resume, _duration(self.train_time), self.cfg.max_time)
                return {}
        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            write_run_info(self.cfg, self.dist.world_size, self.effective_lr)
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            lrs = ", ".join(f"{k} {v:.3g}" for k, v in self.effective_lr.items())
            log.info(
                "training on %d images (%d validation) with %s, world size %d, effective lr %s (lr x %d)%s",
                len(self.train_items), len(self.val_items), self.method_name, self.dist.world_size, lrs, self.dist.world_size,
                f", resumed from {resume} at {position(self.epoch, self.step_in_epoch)}" if resume else "",
            )
            self.on_train_start()
        metrics: dict[str, float] = {}
        validated = False
        self._fit_start, self.agreed_time = monotonic(), self.train_time
        try:
            with self._signals_stop_training():
                while self.epoch < t.max_epochs:
                    self.train_epoch()
                    if self.out_of_time:  # mid-epoch
                        validated = False
                        break
                    self.epoch += 1
                    last = self.epoch == t.max_epochs
                    validated = self.epoch % t.val_interval == 0 or last
                    if validated:
                        metrics = self._validate()
                    saved = self.epoch % self.cfg.checkpoint_interval == 0 or last
                    if saved:
                        self.save("last.pt")
                    reason = broadcast_object(self.stop_reason(metrics)) if validated else None  # rank 0's answer
                    if reason:
                        if not saved:
                            self.save("last.pt")
                        if self.dist.is_main:
                            log.warning("%s", reason)
                        break
                    if not last and self._stop_if_requested(already_saved=saved):
                        self.out_of_time = True
                        break
                if self.out_of_time:
                    metrics = self._finish_at_max_time(metrics, validated)
        finally:
            if self.writer is not None:
                self.writer.close()
        return metrics

    def _finish_at_max_time(self, metrics: dict[str, float], validated: bool) -> dict[str, float]:
        """``max_time`` is spent: a final validation (unless the epoch just ended with one; ``best.pt`` as usual),
        then ``last.pt``."""
        if not validated:
            metrics = self._validate()
        self.save("last.pt")
        if self.dist.is_main:
            log.info("max_time=%s reached %s after %s of training; %s holds the run; resume with resume_ckpt=true "
                     "and a longer max_time to train on", self.cfg.max_time, at_position(self.epoch, self.step_in_epoch),
                     _duration(self.elapsed_time), self.ckpt_dir / "last.pt")
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds beside the tracked components: progress (with the seconds trained so far),
        the best measure, the config."""
        state = dict(epoch=self.epoch, step_in_epoch=self.step_in_epoch, global_step=self.global_step,
                     train_time=self.elapsed_time, world_size=self.dist.world_size, config=to_dict(self.cfg))
        if self.best_metric:
            state[f"best_{self.best_metric}"] = self._best_sign * self.best_value
        return state

    @property
    def _best_sign(self) -> float:
        """``best_value`` holds the measure times this, so that higher is always better inside."""
        return -1.0 if self.best_lower else 1.0

    def save(self, name: str = "last.pt") -> None:
        """``run_dir/checkpoints/<name>`` (see :meth:`medgen.training.checkpointer.Checkpointer.save`)."""
        self.checkpointer.save(name, self.state_dict())

    def load(self, path: str | Path) -> None:
        """Restore everything from a checkpoint written by :meth:`save`, and this rank's RNG states; the
        config's learning rates apply, and the settings that differ from the checkpoint's are listed."""
        path = Path(path)
        ckpt = self.checkpointer.read(path)
        now = to_dict(self.cfg)
        self.checkpointer.check(ckpt, path, now)
        same_streams = self.checkpointer.restore(ckpt)
        self.epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        self.step_in_epoch = int(ckpt.get("step_in_epoch", 0))
        self.train_time = float(ckpt.get("train_time", 0.0))
        if self.best_metric:
            self.best_value = self._best_sign * float(ckpt.get(f"best_{self.best_metric}", self._best_sign * -math.inf))
        self._apply_config_lr()
        changed = changed_settings(ckpt.get("config") or {}, now)
        if changed and self.dist.is_main:
            log.info("resuming %s with changed settings: %s", path, "; ".join(changed))
        if not same_streams and self.dist.is_main:
            log.warning("%s was written by %d processes, this run has %d: random streams restart", path,
                        len(ckpt.get("rng", [])), self.dist.world_size)

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


# ---------------------------------------------------------------------------------------------- the launcher
def launch(config: str | Path, overrides: Sequence[str], trainer_cls: type[Trainer]) -> dict[str, float]:
    """Load the config, join the process group, find and check the data, train. Errors a user can fix are
    :class:`medgen.errors.MedgenError`; the caller (the CLI) turns them into one line."""
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
