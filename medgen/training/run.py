"""What every medgen trainer shares around its loop: the command line, resume rules, run info, saving."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

import torch

import medgen
from medgen.config import ConfigError, to_dict
from medgen.config.vae import RunConfig, load_config
from medgen.distributed import DistInfo, all_gather_objects, cleanup, init_distributed
from medgen.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

log = logging.getLogger("medgen.train")


def resume_path(cfg: RunConfig) -> Path | None:
    """The checkpoint to resume from: ``checkpoint_dir`` (or ``run_dir/checkpoints/last.pt``) when
    ``resume_ckpt`` is true, ``last.pt`` after a torchrun restart, else None. A new run never overwrites
    an existing one."""
    last = cfg.checkpoint_path
    if cfg.resume_ckpt:
        path = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else last
        if not path.is_file():
            raise ConfigError(f"resume_ckpt=true but checkpoint {path} does not exist; set checkpoint_dir to a checkpoint file")
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
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    versions = {
        "medgen": medgen.__version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "world_size": world_size,
        "effective_lr": effective_lr,
    }
    (run_dir / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")


def save_run_checkpoint(state: Callable[[], dict[str, Any]], path: Path, dist_info: DistInfo) -> None:
    """Every rank contributes its RNG state; rank 0 writes ``state()`` plus those states atomically."""
    rngs = all_gather_objects(rng_state())
    if dist_info.is_main:
        save_checkpoint({**state(), "rng": rngs}, path)


def load_run_checkpoint(path: Path, dist_info: DistInfo) -> dict[str, Any]:
    """Load a checkpoint (weights_only) and restore this rank's RNG states from it."""
    ckpt = load_checkpoint(path, map_location=dist_info.device)
    rngs = ckpt.get("rng", [])
    if len(rngs) == dist_info.world_size:
        set_rng_state(rngs[dist_info.rank])
    elif dist_info.is_main:
        log.warning("%s was written by %d processes, this run has %d: random streams restart", path, len(rngs), dist_info.world_size)
    return ckpt


def build_arg_parser(parser: argparse.ArgumentParser | None, description: str, example_config: str, example_set: str):
    parser = parser or argparse.ArgumentParser(description=description)
    parser.add_argument("config", help=f"config JSON file, e.g. {example_config}")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override a config key (dotted path, JSON value), e.g. --set {example_set}",
    )
    return parser


def launch(args: argparse.Namespace, config_cls: type, trainer_cls: type) -> int:
    """Load the config, join the process group, train; config and data errors exit 2 with one message."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = load_config(args.config, args.overrides, cls=config_cls)
    except ConfigError as e:
        print(f"medgen: config error: {e}", file=sys.stderr)
        return 2
    dist_info = init_distributed(cfg.backend)
    if not dist_info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        trainer_cls(cfg, dist_info).fit()
    except ConfigError as e:
        print(f"medgen: {e}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    return 0


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


def optimizer_step(loss: torch.Tensor, opt, scaler: torch.amp.GradScaler, module: torch.nn.Module, grad_clip: float | None) -> None:
    """Backward (loss-scaled under fp16), optional gradient-norm clipping, optimiser step."""
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()


def step_schedulers(*schedulers) -> None:
    """End-of-epoch LR scheduler steps. A network may not have stepped yet (adversarial warm-up, n_critic
    above the steps so far); its schedule still advances with the epochs, so torch's warning is moot."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        for scheduler in schedulers:
            scheduler.step()


def log_epoch_scalars(writer, scalars: dict[str, float], rate: float, opt_g, opt_d, step: int, prefix: str = "") -> None:
    """TensorBoard: loss scalars (already tagged), images/s and both learning rates; no-op without a writer."""
    if writer is None:
        return
    for tag, value in scalars.items():
        writer.add_scalar(prefix + tag, value, step)
    writer.add_scalar(f"{prefix}throughput/images_per_s", rate, step)
    writer.add_scalar(f"{prefix}lr/generator", opt_g.param_groups[0]["lr"], step)
    writer.add_scalar(f"{prefix}lr/discriminator", opt_d.param_groups[0]["lr"], step)
