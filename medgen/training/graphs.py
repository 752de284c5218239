"""``cuda_graphs=true``: a network's forward and backward passes replayed from CUDA graphs.

On a GPU, a step of a deep network at a small batch is a thousand or more small kernels, and the host takes
longer to queue them (tens of microseconds each through PyTorch's dispatcher) than the GPU takes to run them: the
GPU waits. A CUDA graph captures the kernels of one forward and one backward pass once and replays them with one
call each, so the host's time per step falls to the few calls outside the network (noise, loss, optimiser, EMA).
The kernels are the ones eager mode runs, on the same values, so the result is eager mode's to rounding (unlike
``torch.compile``, which generates other kernels, and needs a minute or more to compile), with one difference:
random draws inside a network (the autoencoder's latent sample) come from the graph's own offsets of the
generator, other values than eager mode would draw, from the same distribution and new at every replay. Each
captured signature keeps the memory pool of its activations between steps: about an eager step's peak per
network (measurements: ``benchmarks/README.md``, "CUDA graphs").

:class:`CudaGraphs` wraps the calls of a step's network: the first call with a new input signature (shapes,
dtypes, autocast) captures a pair of graphs with :func:`torch.cuda.make_graphed_callables` (three warm-up passes
that change no weights or gradients, then the capture); later calls with that signature replay them. Anything
else runs eagerly: evaluation, ``no_grad``, more than :attr:`CudaGraphs.max_signatures` signatures (an epoch's last,
smaller batch is one more). What the trainer must guarantee, and checks before turning graphs on
(:func:`graphs_unavailable`): one CUDA process (DDP's gradient hooks do not run inside a replayed backward), one
backward per optimiser step (``grad_accum_steps=1``: the gradients a replay returns live in the graph's memory, which
the next replay overwrites), autocast without its weight cache, and no host read inside the network (medgen's steps
have none: ``tests/test_host_syncs.py``).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def graphs_unavailable(device: torch.device, distributed: bool, grad_accum_steps: int, compile: bool) -> str | None:
    """Why ``cuda_graphs=true`` cannot run here (None: it can)."""
    if device.type != "cuda":
        return f"it needs a CUDA device (this run is on {device.type})"
    if distributed:
        return "DDP's gradient all-reduce does not run inside a replayed backward; it works in a single-GPU run"
    if grad_accum_steps != 1:
        return (f"grad_accum_steps={grad_accum_steps}: a replayed backward returns gradients in the graph's own memory, "
                "which the next micro-step's replay overwrites; it needs grad_accum_steps=1")
    if compile:
        return "compile=true: a compiled network is captured by torch.compile itself (compile mode reduce-overhead)"
    return None


class _Call(torch.nn.Module):
    """``net(*args, **kwargs)`` as a module of positional tensors (what ``make_graphed_callables`` takes)."""

    def __init__(self, net: torch.nn.Module, n_args: int, names: tuple[str, ...]):
        super().__init__()
        self.net, self.n_args, self.names = net, n_args, names

    def forward(self, *tensors):
        return self.net(*tensors[: self.n_args], **dict(zip(self.names, tensors[self.n_args:])))


class CudaGraphs:
    """Calls networks through CUDA graphs when ``enabled`` (see the module's docstring), eagerly otherwise."""

    max_signatures = 4  # graph pairs per network; each holds its own activation memory

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._graphed: dict[tuple, torch.nn.Module] = {}  # by (id(net), input signature)
        self._eager: set[int] = set()  # networks whose new signatures run eagerly (past max_signatures, or no memory)
        self._params: dict[int, list[torch.nn.Parameter]] = {}

    def __call__(self, net: torch.nn.Module, *args: torch.Tensor, **kwargs: torch.Tensor | None):
        if not (self.enabled and net.training and torch.is_grad_enabled()):
            return net(*args, **kwargs)
        names = tuple(k for k, v in kwargs.items() if v is not None)
        tensors = (*args, *(kwargs[k] for k in names))
        params = self._params.get(id(net))
        if params is None:  # listed once: walking a deep network's module tree costs the host half a millisecond
            params = self._params[id(net)] = list(net.parameters())
        key = (id(net), len(args), names, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"),
               tuple(p.requires_grad for p in params),  # a GAN freezes its critic for the generator's step
               *((tuple(t.shape), t.dtype, t.requires_grad) for t in tensors))
        graphed = self._graphed.get(key)
        if graphed is None:
            if id(net) in self._eager:
                return net(*args, **kwargs)
            if sum(k[0] == id(net) for k in self._graphed) >= self.max_signatures:
                self._eager.add(id(net))
                log.warning("cuda_graphs: %s was called with more than %d input shapes; the others run eagerly "
                            "(fixed patch and batch sizes keep every step on a graph)", type(net).__name__,
                            self.max_signatures)
                return net(*args, **kwargs)
            # The capture's autograd nodes for the parameters live on its side stream, so each replayed backward
            # hands their gradients across streams: a wait queued on the device (no host sync; the replays are
            # measured with it, benchmarks/README.md), about which PyTorch warns once per process.
            quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)  # recent torch only
            if quiet is not None:
                quiet(False)
            samples = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in tensors)
            try:
                graphed = torch.cuda.make_graphed_callables(_Call(net, len(args), names), samples, allow_unused_input=True)
            except torch.cuda.OutOfMemoryError:
                # a graph keeps its activations' memory; where a step only just fits, train this network eagerly
                del samples
                torch.cuda.empty_cache()
                self._eager.add(id(net))
                log.warning("cuda_graphs: capturing %s for inputs %s ran out of GPU memory; it trains eagerly from "
                            "here (a graph holds its activations between steps; cuda_graphs=false turns graphs off)",
                            type(net).__name__, [tuple(t.shape) for t in tensors])
                return net(*args, **kwargs)
            self._graphed[key] = graphed
            log.debug("cuda_graphs: captured %s for inputs %s", type(net).__name__, [tuple(t.shape) for t in tensors])
        return graphed(*tensors)
