"""Checkpoints of a training run: what they hold, where resuming starts, and what a resume must match.

A trainer registers what a checkpoint holds with :meth:`Checkpointer.track` (networks, optimisers, schedulers,
scalers, EMA copies, records: anything with ``state_dict()`` / ``load_state_dict()``); the checkpointer writes
them with the run's progress, the config and every rank's RNG state (rank 0 writes, atomically, never
non-finite weights), reads them back, and refuses a checkpoint of another architecture or another set of
components, naming what differs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

import medgen
from medgen.config import ConfigError, RunConfig
from medgen.errors import MedgenError
from medgen.io.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from medgen.training.distributed import DistInfo, all_gather_objects, all_reduce_max

# keys that say how to resume, not how to train: a change is not reported
RESUME_ONLY_KEYS = ("resume_ckpt", "checkpoint_dir", "resume_from")


class NonFiniteTraining(MedgenError):
    """Training produced non-finite losses or weights for longer than ``max_nonfinite_steps`` allows."""


class Record(dict):
    """Plain values a checkpoint keeps (counts, a stored config); a tracked component like any other.
    Loading updates it, so a key added since the checkpoint was written keeps its default."""

    def state_dict(self) -> dict:
        return dict(self)

    def load_state_dict(self, state: dict) -> None:
        self.update(state)


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


def changed_settings(saved: dict, now: dict) -> list[str]:
    """Every setting of ``now`` that differs from the ``saved`` config, except how to resume."""
    return [d for key in sorted(set(saved) | set(now)) if key not in RESUME_ONLY_KEYS
            for d in _differences(saved.get(key), now.get(key), key)]


class Checkpointer:
    """Writes and reads ``directory/<name>.pt`` for one run.

    Args:
        directory: ``run_dir/checkpoints``.
        dist_info: this process's rank and device (rank 0 writes; every rank contributes its RNG state).
        method: the trainer's name, for messages.
        section: the config's training section, for the advice in messages (``<section>.lr``).
        resume_keys: dotted config keys a resumed run must share with its checkpoint (the architecture).
    """

    def __init__(self, directory: Path, dist_info: DistInfo, method: str, section: str, resume_keys: Sequence[str] = ()):
        self.dir, self.dist, self.method, self.section = Path(directory), dist_info, method, section
        self.resume_keys = tuple(resume_keys)
        self.components: dict[str, Any] = {}

    def track(self, **components: Any) -> None:
        """Register what a checkpoint holds, each saved under its keyword."""
        self.components.update(components)

    def save(self, name: str, extra: dict[str, Any]) -> Path:
        """Every tracked component's state plus ``extra`` (progress, config) and every rank's RNG state, written
        by rank 0 to ``directory/name`` atomically. Weights with a non-finite value are never written: the
        previous file stays. Every rank must call it."""
        path = self.dir / name
        bad = [n for n, comp in self.components.items() if isinstance(comp, torch.nn.Module)
               and not all(torch.isfinite(t).all() for t in comp.state_dict().values() if t.is_floating_point())]
        if int(all_reduce_max(torch.tensor([len(bad)], device=self.dist.device)).item()):
            raise NonFiniteTraining(f"{', '.join(bad) or 'a network on another rank'} holds non-finite weights; "
                                    f"{path} was not overwritten; lower {self.section}.lr or set "
                                    f"{self.section}.grad_clip, and resume from the last checkpoint")
        rngs = all_gather_objects(rng_state())
        if self.dist.is_main:
            state = {n: comp.state_dict() for n, comp in self.components.items()}
            save_checkpoint({**state, **extra, "medgen_version": medgen.__version__, "rng": rngs}, path)
        return path

    def read(self, path: str | Path) -> dict[str, Any]:
        """The checkpoint at ``path``; a truncated or damaged one is named with the run's other checkpoint offered."""
        try:
            return load_checkpoint(path, map_location=self.dist.device)
        except CheckpointError as e:
            others = [p for p in (self.dir / "best.pt", self.dir / "last.pt") if p != Path(path) and p.is_file()]
            hint = f"; to go on from the last good state, set resume_from={others[0]}" if others else ""
            raise CheckpointError(f"{e}{hint}") from None

    def check(self, ckpt: dict[str, Any], path: Path, config: dict) -> None:
        """Refuse a checkpoint of another architecture or another set of components, naming what differs."""
        saved = ckpt.get("config") or {}
        diffs = [d for key in self.resume_keys if _config_at(saved, key) is not None
                 for d in _differences(_config_at(saved, key), _config_at(config, key), key)]
        if diffs:
            raise ConfigError(f"{path} was trained with {'; '.join(diffs)}; resume with the same settings or start a new run_dir")
        missing = [name for name, comp in self.components.items()
                   if (name not in ckpt or ckpt[name] is None) and not isinstance(comp, Record)]
        extra = [name for name in ckpt if name not in self.components and isinstance(ckpt[name], dict)
                 and name not in ("config", "rng")]
        if missing or extra:
            raise ConfigError(
                f"{path} {'lacks ' + ', '.join(missing) if missing else 'also holds ' + ', '.join(extra)}, which this "
                f"{self.method} run {'needs' if missing else 'does not train'}; resume with the settings it was trained with"
            )

    def restore(self, ckpt: dict[str, Any]) -> bool:
        """Load every tracked component from ``ckpt`` and this rank's RNG state; returns whether the random
        streams continue (False when the checkpoint was written by another number of processes)."""
        for name, comp in self.components.items():
            if name in ckpt:  # only a Record may be absent (a count added since the checkpoint was written)
                comp.load_state_dict(ckpt[name])
        rngs = ckpt.get("rng", [])
        if len(rngs) != self.dist.world_size:
            return False
        set_rng_state(rngs[self.dist.rank])
        return True


__all__ = ["Checkpointer", "NonFiniteTraining", "Record", "changed_settings", "resume_path"]
