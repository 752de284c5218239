"""What a training step keeps on the device, so that the host never waits for the device inside a step.

A host read of a device tensor (``.item()``, ``bool()``, ``.tolist()``, a copy to the CPU) waits until every
kernel queued so far has run. On a GPU, one such read per step stops the CPU from queueing the next step's
kernels while the current ones run, which is where small and medium models lose most of their throughput.
So a step decides on the device:

- :func:`guarded_step`: a non-finite gradient norm skips the optimiser step through the fused optimiser's
  ``found_inf`` input (the path a loss scaler takes): the kernel leaves weights, moments and step count as they
  were. The norm is never read on the host.
- :func:`ema_update`: the EMA of :class:`torch.optim.swa_utils.AveragedModel` with
  :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`, to rounding, except that a skipped step does not move it and
  ``n_averaged`` is never read on the host (``AveragedModel.update_parameters`` reads it twice per call).
- :class:`SkippedSteps` and :class:`ScalarSums`: counters and loss sums on the device, read by the training loop
  once per ``log_interval`` and at the end of each epoch.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Iterable, Sequence

import torch
from torch.optim.swa_utils import AveragedModel


def guarded_step(opt: torch.optim.Optimizer, params: Iterable[torch.Tensor], grad_clip: float | None) -> torch.Tensor:
    """Clip the gradients of ``params`` to norm ``grad_clip`` (None: no clipping) and step ``opt`` unless their
    norm is non-finite. Returns the skip flag, a 0-d float tensor on the device (1: skipped), never read here.

    ``opt`` must be fused (:func:`medgen.training.base.adam`): its kernel reads ``found_inf`` on the device and
    then leaves parameters, moments and step counts untouched. Without clipping only the norm is computed
    (``clip_grad_norm_(max_norm=inf)`` would also multiply every gradient by 1.0, the same values).
    """
    params = [p for p in params if p.grad is not None]
    if grad_clip is None:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    found_inf = torch.isfinite(norm).logical_not().float()
    opt.found_inf = found_inf  # read by the fused kernel, as GradScaler.step hands it over
    try:
        opt.step()
    finally:
        del opt.found_inf
    return found_inf


@torch.no_grad()
def ema_update(ema: AveragedModel, module: torch.nn.Module, decay: float, skipped: torch.Tensor | None) -> None:
    """``ema.update_parameters(module)`` for an ``AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay),
    use_buffers=True)``, to rounding, but without host reads and not moving when ``skipped`` (a 0-d device
    tensor, 1: the optimiser step was skipped) is set. ``ema.n_averaged`` must be on ``module``'s device
    (:func:`ema_on_device`).

    Each floating tensor becomes ``avg * (1 - w) + cur * w`` with one weight ``w`` for all, a 0-d device tensor:
    1 at the first update (an exact copy), ``1 - decay`` later, 0 for a skipped step (an exact no-op). The three
    ``_foreach`` calls take the weight as a tensor and run as a few multi-tensor kernels on a GPU;
    ``_foreach_lerp_`` with tensor weights (``get_ema_multi_avg_fn``'s lerp takes a host float) runs one kernel
    per tensor there, which cost the latent-diffusion step 15% of its speed on an H200. Integer buffers follow
    ``get_ema_multi_avg_fn``'s rule for them.
    """
    n = ema.n_averaged
    keep = torch.zeros((), device=n.device) if skipped is None else skipped
    weight = torch.where(n == 0, 1.0, 1.0 - decay) * (1.0 - keep)
    floats, others = _ema_pairs(ema, module)
    for dtype, (avg, cur) in floats.items():
        w = weight.to(dtype)
        moved = torch._foreach_mul(cur, w)
        torch._foreach_mul_(avg, 1 - w)
        torch._foreach_add_(avg, moved)
    for avg, cur in others:
        new = torch.where(n == 0, cur, avg * decay + cur * (1 - decay))
        avg.copy_(torch.where(keep > 0, avg, new))
    n.add_(1 - keep.long())


_EMA_PAIRS: "weakref.WeakKeyDictionary[AveragedModel, tuple]" = weakref.WeakKeyDictionary()


def _ema_pairs(ema: AveragedModel, module: torch.nn.Module) -> tuple[dict, list]:
    """The EMA's tensors paired with ``module``'s: floating ones as ``{dtype: (ema tensors, module tensors)}``,
    the others as ``[(ema tensor, module tensor)]``. Made once per (EMA, module) and kept while the EMA lives:
    walking a deep network's ``parameters()`` passes every tensor up through each level of its module tree, about
    half a millisecond per walk for the shipped UNet, which a GPU step that only queues kernels cannot afford.
    Training changes tensors in place (optimiser steps, ``load_state_dict``, ``.to()``), so the pairs stay valid.
    """
    cached = _EMA_PAIRS.get(ema)
    if cached is not None and cached[0]() is module:
        return cached[1], cached[2]
    floats, others = {}, []
    for a, c in zip(itertools.chain(ema.module.parameters(), ema.module.buffers()),
                    itertools.chain(module.parameters(), module.buffers())):
        if a.is_floating_point():
            avg, cur = floats.setdefault(a.dtype, ([], []))
            avg.append(a)
            cur.append(c)
        else:
            others.append((a, c))
    _EMA_PAIRS[ema] = (weakref.ref(module), floats, others)
    return floats, others


def ema_on_device(ema: AveragedModel, device: torch.device) -> None:
    """Move ``ema.n_averaged`` (created on the CPU) to ``device``, where :func:`ema_update` reads it."""
    ema.n_averaged = ema.n_averaged.to(device)


class SkippedSteps:
    """Skipped steps counted on the device: the current run of skipped steps in a row, the total, and the longest
    run since the last :meth:`read` with the step at which it reached that length."""

    def __init__(self, device: torch.device):
        self.state = torch.zeros(4, dtype=torch.long, device=device)  # run, total, longest, longest's last step

    def update(self, skipped: torch.Tensor, step: int) -> None:
        """After step ``step`` (1-based global), whose optimiser steps were skipped when ``skipped`` (0-d) is set."""
        s = (skipped > 0).long()
        run = (self.state[0] + 1) * s
        longer = run > self.state[2]
        self.state = torch.stack([run, self.state[1] + s, torch.maximum(run, self.state[2]),
                                  torch.where(longer, step, self.state[3])])

    def read(self) -> tuple[int, int, int, int]:
        """``(run, total, longest, longest_at)`` (one host read); the longest run restarts from the current one."""
        run, total, longest, at = self.state.tolist()
        self.state[2] = self.state[0]
        return run, total, longest, at


class ScalarSums:
    """Sums and counts of the scalars a step logs, kept on the device. Non-finite values are left out of the sums
    (the means stay finite) and the last one of each name is remembered for the warning that names them."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._index: dict[tuple[str, ...], torch.Tensor] = {}
        self.sums = self.counts = self.bad = None

    def add(self, scalars: dict[str, torch.Tensor]) -> None:
        if not scalars:
            return
        keys = tuple(scalars)
        values = torch.stack([v.detach().float() for v in scalars.values()])
        if keys not in self._index:  # once per set of names (a GAN has two): new slots, an index on the device
            new = [k for k in keys if k not in self.names]
            self.names += new
            pad = values.new_zeros(len(new))
            self.sums, self.counts, self.bad = (pad.clone() if t is None else torch.cat([t, pad])
                                                for t in (self.sums, self.counts, self.bad))
            self._index[keys] = torch.tensor([self.names.index(k) for k in keys], device=values.device)
        idx = self._index[keys]
        finite = torch.isfinite(values)
        self.sums.index_add_(0, idx, torch.where(finite, values, 0.0))
        self.counts.index_add_(0, idx, finite.float())
        self.bad.index_copy_(0, idx, torch.where(finite, self.bad.index_select(0, idx), values))

    def means(self) -> dict[str, float]:
        """The mean of each name over its finite values so far (one host read)."""
        if not self.names:
            return {}
        sums, counts = torch.stack([self.sums, self.counts]).tolist()
        return {k: s / c for k, s, c in zip(self.names, sums, counts) if c}

    def nonfinite(self) -> dict[str, float]:
        """The last non-finite value of each name that had one since the previous call (one host read)."""
        if not self.names:
            return {}
        values = self.bad.tolist()
        self.bad.zero_()
        return {k: v for k, v in zip(self.names, values) if v != 0.0}


def any_set(flags: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """Whether any of the 0-d skip flags is set, as one flag (None for none)."""
    if not flags:
        return None
    return flags[0] if len(flags) == 1 else torch.stack(list(flags)).amax()
