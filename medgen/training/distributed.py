"""torchrun set-up: ranks, device, process group, learning-rate scaling and rank-0 helpers."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from medgen.errors import MedgenError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str = "auto") -> DistInfo:
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE; start a process group when there are several ranks.

    nccl on GPU, gloo on CPU (``backend="auto"``). Without torchrun this is a single process (world size 1).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if backend in ("auto", "nccl") and local_world > torch.cuda.device_count():
            raise MedgenError(
                f"{local_world} processes on this node but {torch.cuda.device_count()} GPU(s): nccl needs one GPU per "
                f"process; use --nproc_per_node={torch.cuda.device_count()} (or backend=gloo to share GPUs)"
            )
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(minutes=30)
        store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun's store outlives restarted workers: without a per-attempt prefix, gloo would read the
        # addresses of the previous attempt's (dead) processes and fail to connect.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"medgen/attempt{attempt}", store)
        # torch.distributed.nn.functional binds ``group=group.WORLD`` as default arguments when first imported
        # (DDP's constructor imports it). Imported after init_process_group, those defaults would hold the
        # default group for the life of the interpreter: destroy_process_group could not free it, and gloo's
        # threads would run on into interpreter shutdown, where a peer's exit can abort the process (SIGABRT,
        # "terminate called without an active exception"). Imported first, the defaults are None.
        from torch.distributed import nn as _dist_nn  # noqa: F401

        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def scaled_lr(lr: float, world_size: int) -> float:
    """The effective learning rate: the per-process ``lr`` times the number of processes."""
    return lr * world_size


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place); a no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The maximum of a tensor over ranks (in place); a no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


_host_group = None


def agreed_max(*values: float) -> list[float]:
    """The largest of each of ``values`` over all ranks, agreed through a CPU (gloo) process group.

    The host waits for the other ranks' hosts, never for a device: under nccl a device tensor would have to be
    read back (``.item()``), waiting for every kernel queued so far. Agreeing every step keeps the stop at the
    very next step boundary (an agreement started asynchronously and read a step later, or one every k steps,
    would stop later and still need a read); measured on the 2-core development machine, a blocking gloo
    all-reduce of one flag between two processes costs about 0.4 ms, during which a GPU keeps running the queued
    step. The group is made on first use, which every rank reaches at the same point. A single process gets
    ``values`` back.
    """
    global _host_group
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    if _host_group is None:
        _host_group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    flag = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_host_group)
    return flag.tolist()


def all_gather_objects(obj):
    """Every rank's ``obj`` as a list indexed by rank (a one-item list in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    """Destroy the process group and let its backend join its threads now, not at interpreter exit.

    Gloo stops its worker and I/O threads only in the backend's destructor, which runs when the last reference
    goes; DDP reducers hold one, so unreachable trainers (reference cycles) are collected first.
    """
    global _host_group
    _host_group = None
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
