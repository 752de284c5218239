"""Checkpoint files: atomic writes, ``weights_only`` loads, RNG states, DDP prefixes."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from medgen.errors import MedgenError
from medgen.io.files import atomic_path


class CheckpointError(MedgenError, FileNotFoundError):
    """A checkpoint file that is missing or cannot be loaded."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs from the file); ``mmap`` maps tensors
    from the file instead of reading them (where the file's format allows it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of a .pt file medgen wrote (run_dir/checkpoints/last.pt)")
    try:
        if mmap:
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
                pass
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError) as e:  # not a torch file, truncated, or a pickle weights_only refuses
        raise CheckpointError(f"{path} cannot be loaded as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def without_prefix(state: dict[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """``state`` without the ``prefix`` that DDP / DataParallel / AveragedModel put on every key (a copy;
    keys without it are kept as they are)."""
    state = dict(state)
    consume_prefix_in_state_dict_if_present(state, prefix)
    return state


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch (CPU and CUDA) random states as plain lists and numbers:
    safe for ``weights_only`` loading and for ``all_gather_object`` across ranks."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
