"""Tiled encoding and decoding with MONAI's ``AutoencoderKL``: images and volumes of any size, one image.

Whole panoramic radiographs (~2900x1400) and CBCT volumes (256^3 and more) do not fit one forward pass
with non-local attention: the attention over every latent position alone would need hundreds of GB, and
its compute grows with the square of the image. So the input is cut into overlapping tiles; each tile's
attention sees only its tile (through PyTorch's scaled-dot-product attention, which never materialises
the attention matrix).

What makes tiles look like one image is GroupNorm. Run tile by tile, every GroupNorm normalises with its
own tile's mean and variance, so a tile over the teeth and a tile over soft tissue come out differently
exposed and every border shows. Here all tiles advance through the network together, one GroupNorm at a
time, and each GroupNorm is handed statistics by the driver:

- ``norm="image"`` (default): the whole image's, summed over the tiles' cores (which partition the image,
  so every pixel counts once), exactly what one forward pass over the whole image computes;
- ``norm="tile"``: each tile's own, what MONAI's sliding-window inference does (as in training on
  patches; measured on a model trained on 64-pixel patches of 96-pixel jaws, it is slightly better on
  images the size of the training images and far worse on larger ones, whose tiles see background only).

Outputs are stitched from the tiles' cores with a linear cross-fade across each border over the middle
half of the overlap (weights sum to one); the outer quarters of each overlap, where a tile's zero padding
reaches in, are dropped. Without attention the result equals the whole-image pass once the overlap covers
the network's receptive field; with attention each tile attends within itself and the cross-fade hides
the difference (:func:`medgen.metrics.seams.seam_ratio` measures it at :func:`output_borders`).

Memory: the work in flight is one tile. With whole-image statistics the tiles' activations wait between two
GroupNorms in ``storage`` (host memory when the model is on a GPU): about one layer's activation of the
whole image, times the overlap. With ``norm="tile"`` tiles run one after another and memory is one tile's.

Tile sizes are in input pixels for encoding (multiples of the downsampling factor, so that the tiles'
latents align with the whole image's) and in latent pixels for decoding.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from itertools import product

import torch
import torch.nn.functional as F
from monai.networks.blocks.spatialattention import SpatialAttentionBlock
from monai.networks.nets import AutoencoderKL
from monai.networks.nets.autoencoderkl import AEKLDownsample, AEKLResBlock
from torch import nn

from medgen.errors import InvalidValueError
from medgen.models.device import free_memory

if TYPE_CHECKING:
    from medgen.config import VAEConfig

__all__ = ["Tiling", "tiling_for", "tile_memory", "fit_tile", "tile_grid", "tiled_encode", "tiled_decode", "tiled_reconstruct", "output_borders", "default_tiling", "downsample_factor"]

# A GroupNorm request from a tile: (the norm layer, the tile's activation before it).
_Request = tuple[nn.GroupNorm, torch.Tensor]


NORM_MODES = ("image", "tile")
OVERLAP = 0.25  # default overlap, a fraction of the tile
NORM = "image"  # default GroupNorm statistics
# One tile's peak memory, in multiples of the network's largest activation on that tile: a residual block holds
# its input (for the skip), the normalised activation and the convolution's output at once, plus one temporary.
ACTIVATIONS_IN_FLIGHT = 4
MEMORY_SHARE = 0.5  # the share of the device's free memory a default tile may use
MIN_TILE = 4  # default tiles are never shrunk below this many times the downsampling factor

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tiling:
    """Tiles of ``tile`` input pixels per axis, neighbours overlapping by ``overlap`` pixels per axis.

    ``norm`` says which statistics GroupNorm uses: ``"image"`` those of the whole image, as one forward pass
    over the whole image would; ``"tile"`` those of each tile, as the model saw its training patches (what
    MONAI's sliding-window inference does).
    """

    tile: tuple[int, ...]
    overlap: tuple[int, ...]
    norm: str = NORM

    @classmethod
    def of(cls, tile: int | Sequence[int], overlap: float | int | Sequence[int], spatial_dims: int, align: int = 1,
           norm: str = NORM) -> "Tiling":
        """From a CLI-style tile size (one number or one per axis) and an overlap (a fraction of the tile
        below 1, else pixels), each rounded to a multiple of ``align`` (the model's downsampling factor)."""
        tiles = [int(tile)] * spatial_dims if isinstance(tile, (int, float)) else [int(t) for t in tile]
        if len(tiles) != spatial_dims or any(t < 1 for t in tiles):
            raise InvalidValueError(f"tile size {tile} must be one positive size or {spatial_dims} of them")
        tiles = [max(align, round(t / align) * align) for t in tiles]
        if isinstance(overlap, (int, float)):
            if overlap < 0:
                raise InvalidValueError(f"overlap {overlap} must not be negative")
            overlaps = [int(round(overlap * t)) if overlap < 1 else int(overlap) for t in tiles]
        else:
            overlaps = [int(o) for o in overlap]
        overlaps = [min(round(o / align) * align, t - align) for o, t in zip(overlaps, tiles)]
        if norm not in NORM_MODES:
            raise InvalidValueError(f"norm statistics {norm!r} must be one of {', '.join(NORM_MODES)}")
        return cls(tuple(tiles), tuple(max(0, o) for o in overlaps), norm)

    def scaled(self, factor: int) -> "Tiling":
        """The same tiling in a space ``factor`` times smaller (image pixels -> latent pixels)."""
        return Tiling(tuple(max(1, t // factor) for t in self.tile), tuple(o // factor for o in self.overlap), self.norm)


def default_tiling(patch_size: Sequence[int], factor: int, overlap: float = OVERLAP, norm: str = NORM) -> Tiling:
    """Tiles of the training patch (GroupNorm statistics and attention context as in training),
    overlapping by ``overlap`` of the tile."""
    return Tiling.of([int(p) for p in patch_size], overlap, len(patch_size), align=factor, norm=norm)


def tiling_for(
    cfg: "VAEConfig",
    tile_size: int | Sequence[int] | None = None,
    overlap: float | None = None,
    norm: str | None = None,
    model: AutoencoderKL | None = None,
) -> Tiling:
    """The tiling of a model trained with ``cfg`` (:func:`medgen.models.tiled.default_tiling` where not given):
    ``tile_size`` image pixels (one or one per axis), ``overlap`` a fraction of the tile (below 1) or pixels,
    ``norm`` the GroupNorm statistics (``"image"`` or ``"tile"``).

    Without ``tile_size``, tiles are the training patch; given the ``model`` (on the device it will run on), a
    patch that would not fit :data:`MEMORY_SHARE` of that device's free memory is shrunk until it does
    (:func:`fit_tile`), and a warning says so.
    """
    f = cfg.autoencoder_def.downsample_factor
    default = default_tiling(cfg.autoencoder_train.patch_size, f)
    tile = default.tile if tile_size is None else tile_size
    if tile_size is None and model is not None:
        tile = fit_tile(model, default.tile)
    return Tiling.of(tile, OVERLAP if overlap is None else overlap, cfg.spatial_dims, align=f, norm=norm or default.norm)


def tile_memory(model: AutoencoderKL, tile: Sequence[int]) -> int:
    """Estimated peak bytes of one tile of ``tile`` input pixels on the model's device (encoding or decoding,
    whichever needs more): :data:`ACTIVATIONS_IN_FLIGHT` times the network's largest activation on that tile.

    The activations are found by running the network on PyTorch's meta device (shapes only: no memory, no
    arithmetic), so the estimate follows whatever blocks the installed MONAI builds.
    """
    _check(model)
    largest = 0

    def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
        nonlocal largest
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                largest = max(largest, t.numel())

    # a copy of the network on the meta device (its weights are not copied), without the caller's hooks
    tensors = [*model.parameters(), *model.buffers()]
    probe = copy.deepcopy(model, {id(t): torch.empty_like(t, device="meta") for t in tensors})
    for m in probe.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        m.register_forward_hook(hook)
    x = torch.empty(1, model.encoder.in_channels, *[int(t) for t in tile], device="meta")
    with torch.no_grad():
        probe(x)
    size = tensors[0].element_size()
    return ACTIVATIONS_IN_FLIGHT * largest * size


def fit_tile(model: AutoencoderKL, tile: Sequence[int], budget: int | None = None) -> tuple[int, ...]:
    """``tile`` (input pixels), its longest axis halved until :func:`tile_memory` fits ``budget`` bytes (default:
    :data:`MEMORY_SHARE` of the free memory of the model's device), never below :data:`MIN_TILE` times the
    downsampling factor."""
    f = downsample_factor(model)
    device = next(model.parameters()).device
    free = free_memory(device) if budget is None else None
    if budget is None:
        if free is None:
            return tuple(int(t) for t in tile)
        budget = int(MEMORY_SHARE * free)
    fitted, need = [int(t) for t in tile], tile_memory(model, tile)
    first = need
    while need > budget and max(fitted) > MIN_TILE * f:
        axis = fitted.index(max(fitted))
        fitted[axis] = max(MIN_TILE * f, fitted[axis] // 2 // f * f)
        need = tile_memory(model, fitted)
    if fitted != [int(t) for t in tile]:
        allowed = f"{MEMORY_SHARE:.0%} of the {free / 2**20:.0f} MB free on {device}" if free is not None else f"{budget / 2**20:.0f} MB"
        _log.warning("tiles of %s pixels instead of the training patch %s: a tile of the patch needs about %.0f MB, more "
                     "than %s (--tile-size sets the tile)", "x".join(map(str, fitted)), "x".join(str(int(t)) for t in tile),
                     first / 2**20, allowed)
    return tuple(fitted)


@dataclass(frozen=True)
class _Axis:
    starts: tuple[int, ...]  # tile starts
    size: int  # tile size (the whole axis when it is smaller than a tile)
    bounds: tuple[int, ...]  # core boundaries: core k is [bounds[k], bounds[k+1])

    @property
    def fade(self) -> float:
        """Half-width of the cross-fade around each core border: a quarter of the narrowest overlap, and at
        most half the narrowest core, so that fades never meet and the weights always sum to one."""
        if len(self.starts) < 2:
            return 0.0
        overlaps = [a + self.size - b for a, b in zip(self.starts, self.starts[1:])]
        cores = [b - a for a, b in zip(self.bounds, self.bounds[1:])]
        return min(min(overlaps) / 4, min(cores) / 2)


def _axis(length: int, tile: int, overlap: int, align: int) -> _Axis:
    if length <= tile:
        return _Axis((0,), length, (0, length))
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, stride)) + [length - tile]
    if len(starts) > 1 and starts[-1] == starts[-2]:
        starts.pop()
    # each core border lies halfway through the overlap of the two tiles around it (aligned)
    inner = [((s + prev + tile) // 2) // align * align for prev, s in zip(starts, starts[1:])]
    return _Axis(tuple(starts), tile, (0, *inner, length))


def tile_grid(shape: Sequence[int], tiling: Tiling, align: int = 1) -> list[_Axis]:
    """Per axis of ``shape``: tile starts, tile size and the core boundaries that partition the axis."""
    return [_axis(int(n), t, o, align) for n, t, o in zip(shape, tiling.tile, tiling.overlap)]


def _ramp(length: int, bounds: tuple[int, int], start: int, half: float, first: bool, last: bool) -> torch.Tensor:
    """1D stitch weight of a tile covering ``[start, start + length)`` whose core is ``bounds``: 1 inside the
    core, cross-fading linearly to 0 over ``half`` pixels on either side of each inner core border."""
    x = torch.arange(length, dtype=torch.float32) + start + 0.5  # pixel centres
    w = torch.ones(length)
    if not first:
        w = w * (((x - bounds[0] + half) / (2 * half)).clamp(0, 1) if half > 0 else (x >= bounds[0]).float())
    if not last:
        w = w * (((bounds[1] + half - x) / (2 * half)).clamp(0, 1) if half > 0 else (x < bounds[1]).float())
    return w


# ----------------------------------------------------------------------------------------------- lockstep run
def _norm(m: nn.GroupNorm, x: torch.Tensor, store: torch.device, device: torch.device) -> Generator[_Request, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    x = x.to(store)  # while the other tiles catch up, this tile's activation waits in ``store``
    mean, rstd = yield (m, x)  # (B, G): the whole image's or this tile's
    x = x.to(device)
    b, c = x.shape[:2]
    mean, rstd = (v.to(device, x.dtype).reshape(b, m.num_groups, *[1] * (x.ndim - 1)) for v in (mean, rstd))
    y = ((x.reshape(b, m.num_groups, c // m.num_groups, *x.shape[2:]) - mean) * rstd).reshape(x.shape)
    if m.affine:
        view = (1, c) + (1,) * (x.ndim - 2)
        y = y * m.weight.view(view).to(y.dtype) + m.bias.view(view).to(y.dtype)
    return y


def _block(m: nn.Module, held: list[torch.Tensor], store: torch.device) -> Generator[_Request, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``m(x)`` with every GroupNorm inside it handed to the driver (MONAI's forward, step by step; the test
    ``test_stepped_blocks_equal_monai_forward`` holds it to MONAI's own). ``x`` comes in ``held`` (taken out
    here) so that no caller keeps the input alive while this tile waits."""
    x = held.pop()
    device = x.device
    if isinstance(m, nn.GroupNorm):
        return (yield from _norm(m, x, store, device))
    if isinstance(m, AEKLResBlock):
        x = x.to(store)
        h = yield from _norm(m.norm1, x, store, device)
        # the shortcut right away: while this tile waits at norm2 it holds the shortcut's channels, not the input's
        skip = m.nin_shortcut(x.to(device)).to(store)
        del x
        h = m.conv1(F.silu(h))
        h = yield from _norm(m.norm2, h, store, device)
        h = m.conv2(F.silu(h))
        return skip.to(device) + h
    if isinstance(m, SpatialAttentionBlock):
        x = x.to(store)
        h = yield from _norm(m.norm, x, store, device)
        shape = h.shape
        h = m.attn(h.reshape(*shape[:2], -1).transpose(1, 2)).transpose(1, 2).reshape(shape)
        return x.to(device) + h
    if any(isinstance(s, (nn.GroupNorm, nn.MultiheadAttention)) for s in m.modules()):
        raise InvalidValueError(f"tiled inference does not know the block {type(m).__name__}; use a MONAI AutoencoderKL")
    return m(x)


def _program(modules: Sequence[nn.Module], tail: Callable[[torch.Tensor], torch.Tensor] | None, store: torch.device):
    def run(image: torch.Tensor, box: tuple[slice, ...], device: torch.device):
        held = [image[(slice(None), slice(None), *box)].to(device)]
        for m in modules:
            held = [(yield from _block(m, held, store))]
        x = held.pop()
        return tail(x) if tail is not None else x

    return run


def _moments(h: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sum and sum of squares (float64) per (batch, group), and the count per group."""
    h = h.double().reshape(h.shape[0], groups, -1)
    return h.sum(-1), h.pow(2).sum(-1), h.shape[-1]


def _layer_scale(h: torch.Tensor, axes: Sequence[_Axis]) -> list[float]:
    """Per axis: pixels of this layer's activation per input pixel."""
    return [h.shape[2 + d] / a.size for d, a in enumerate(axes)]


def _image_stats(requests: list[_Request], tiles: list[tuple[int, ...]], axes: Sequence[_Axis]):
    """The whole image's (mean, rstd) from the tiles' cores (which partition the image)."""
    layer = requests[0][0]
    s = ss = 0
    n = 0
    for t, (_, h) in zip(tiles, requests):
        core = tuple(slice(round((a.bounds[i] - a.starts[i]) * sd), round((a.bounds[i + 1] - a.starts[i]) * sd))
                     for a, i, sd in zip(axes, t, _layer_scale(h, axes)))
        a_s, a_ss, a_n = _moments(h[(slice(None), slice(None), *core)], layer.num_groups)
        s, ss, n = s + a_s, ss + a_ss, n + a_n
    return _mean_rstd(s, ss, n, layer.eps)


def _tile_stats(request: _Request) -> tuple[torch.Tensor, torch.Tensor]:
    """A tile's own (mean, rstd), as the model saw its training patches."""
    layer, h = request
    return _mean_rstd(*_moments(h, layer.num_groups), layer.eps)


def _mean_rstd(s: torch.Tensor, ss: torch.Tensor, n: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean = s / n
    return mean, torch.rsqrt((ss / n - mean * mean).clamp_min(0) + eps)


@functools.cache
def _release_freed_memory() -> None:
    """Let glibc return freed tile-sized buffers to the system (Linux). Its default mmap threshold rises to the
    size of each freed large block, after which tile activations come from the heap, which fragments: the
    resident memory of a whole panoramic grew about twice the activations it held at any time."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: buffers of 1 MB and more are mapped, and unmapped when freed
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _run_tiled(
    program: Callable[..., Generator],
    x: torch.Tensor,
    tiling: Tiling,
    align: int,
    scale: float,
    device: torch.device,
) -> torch.Tensor:
    """Run ``program`` on every tile of ``x`` (B, C, *spatial) in lockstep and stitch the outputs, whose
    spatial size is ``scale`` times the input's, into a float32 tensor on ``x``'s device."""
    _release_freed_memory()
    spatial = tuple(x.shape[2:])
    axes = tile_grid(spatial, tiling, align)
    tiles = list(product(*[range(len(a.starts)) for a in axes]))
    out: torch.Tensor | None = None

    def stitch(t: tuple[int, ...], y: torch.Tensor) -> None:
        nonlocal out
        if out is None:
            shape = (y.shape[0], y.shape[1], *(round(n * scale) for n in spatial))
            out = torch.zeros(shape, dtype=torch.float32, device=x.device)
        box, weight = [], torch.ones(())
        for d, (a, i) in enumerate(zip(axes, t)):
            start, length = round(a.starts[i] * scale), y.shape[2 + d]
            bounds = (round(a.bounds[i] * scale), round(a.bounds[i + 1] * scale))
            w = _ramp(length, bounds, start, a.fade * scale, i == 0, i == len(a.starts) - 1)
            weight = weight * w.view([length if k == d else 1 for k in range(len(axes))])
            box.append(slice(start, start + length))
        out[(slice(None), slice(None), *box)] += y.float().to(x.device) * weight.to(x.device)

    def start(t: tuple[int, ...]) -> Generator:  # a tile reads its input slice at its first step
        return program(x, tuple(slice(a.starts[i], a.starts[i] + a.size) for a, i in zip(axes, t)), device)

    if tiling.norm == "tile":
        # each tile needs only its own statistics: tiles run one after another, memory is one tile's
        for t in tiles:
            g = start(t)
            try:
                request = next(g)
                while True:
                    request = g.send(_tile_stats(request))
            except StopIteration as stop:
                stitch(t, stop.value)
        assert out is not None
        return out
    # whole-image statistics: all tiles advance together, one GroupNorm at a time
    gens = [start(t) for t in tiles]
    try:
        requests = [next(g) for g in gens]
    except StopIteration as stop:
        raise InvalidValueError("tiled inference needs a network with GroupNorm (a MONAI AutoencoderKL)") from stop
    while requests:
        layer = requests[0][0]
        assert all(m is layer for m, _ in requests), "tiles diverged"  # every tile runs the same program
        stats = _image_stats(requests, tiles, axes)
        requests = None  # the tiles' waiting activations stay referenced by their generators only
        pending = []
        for t, g in zip(tiles, gens):
            try:
                pending.append(g.send(stats))
            except StopIteration as stop:
                stitch(t, stop.value)
        assert not pending or len(pending) == len(gens), "tiles diverged"
        requests = pending
    assert out is not None
    return out


def _check(model: AutoencoderKL) -> None:
    if not isinstance(model, AutoencoderKL):
        raise InvalidValueError(f"tiled inference needs a MONAI AutoencoderKL, got {type(model).__name__}")


def downsample_factor(model: AutoencoderKL) -> int:
    """2 ** (number of downsampling layers of the encoder)."""
    return 2 ** sum(isinstance(b, AEKLDownsample) for b in model.encoder.blocks)


def _devices(model: nn.Module, storage: str | torch.device | None) -> tuple[torch.device, torch.device]:
    device = next(model.parameters()).device
    if storage is None:  # on a GPU the tiles wait in host memory; only the running tile occupies the GPU
        storage = "cpu" if device.type != "cpu" else device
    return device, torch.device(storage)


@torch.no_grad()
def tiled_encode(
    model: AutoencoderKL, x: torch.Tensor, tiling: Tiling, storage: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.encode(x)`` in tiles: ``(z_mu, z_sigma)`` of the whole input.

    Args:
        model: the autoencoder (eval mode).
        x: ``(B, C, *spatial)``, each spatial size a multiple of the downsampling factor; any device.
        tiling: in input pixels; tile sizes and overlaps are rounded to multiples of the downsampling factor.
        storage: where tiles wait between GroupNorms (default: host memory when the model is on a GPU).

    Returns:
        ``(z_mu, z_sigma)``, each ``(B, latent_channels, *spatial / factor)``, float32 on ``x``'s device.
    """
    _check(model)
    f = downsample_factor(model)
    bad = [n for n in x.shape[2:] if n % f]
    if bad:
        raise InvalidValueError(f"tiled_encode: input size {tuple(x.shape[2:])} is not a multiple of the downsampling factor {f}; pad it")
    tiling = Tiling.of(tiling.tile, tiling.overlap, x.ndim - 2, align=f, norm=tiling.norm)

    def tail(h: torch.Tensor) -> torch.Tensor:
        return torch.cat([model.quant_conv_mu(h), model.quant_conv_log_sigma(h)], dim=1)

    device, store = _devices(model, storage)
    out = _run_tiled(_program(list(model.encoder.blocks), tail, store), x, tiling, f, 1 / f, device)
    z_mu, log_var = out.chunk(2, dim=1)
    return z_mu, torch.exp(log_var.clamp(-30.0, 20.0) / 2)


@torch.no_grad()
def tiled_decode(
    model: AutoencoderKL, z: torch.Tensor, tiling: Tiling, storage: str | torch.device | None = None
) -> torch.Tensor:
    """``model.decode(z)`` in tiles.

    Args:
        model: the autoencoder (eval mode).
        z: latents ``(B, latent_channels, *latent_spatial)``; any device.
        tiling: in IMAGE pixels (as for :func:`tiled_encode`); divided by the downsampling factor here.
        storage: as for :func:`tiled_encode`.

    Returns:
        ``(B, out_channels, *latent_spatial * factor)`` float32 on ``z``'s device.
    """
    _check(model)
    f = downsample_factor(model)
    latent = Tiling.of(tiling.tile, tiling.overlap, z.ndim - 2, align=f, norm=tiling.norm).scaled(f)
    device, store = _devices(model, storage)
    modules = [model.post_quant_conv, *model.decoder.blocks]
    return _run_tiled(_program(modules, None, store), z, latent, 1, float(f), device)


def tiled_reconstruct(
    model: AutoencoderKL, x: torch.Tensor, tiling: Tiling, storage: str | torch.device | None = None
) -> torch.Tensor:
    """``decode(z_mu)`` of ``x`` in tiles (:func:`tiled_encode` then :func:`tiled_decode`, same tiling)."""
    z_mu, _ = tiled_encode(model, x, tiling, storage)
    return tiled_decode(model, z_mu, tiling, storage)


def output_borders(shape: Sequence[int], tiling: Tiling, factor: int) -> list[list[int]]:
    """The tile borders of :func:`tiled_decode`'s output for an image of ``shape`` (a multiple of
    ``factor``): where the latent tiles' cores meet, in image pixels (where
    :func:`medgen.metrics.seams.seam_ratio` looks for seams)."""
    latent = tiling.scaled(factor)
    axes = tile_grid([n // factor for n in shape], latent, 1)
    return [[b * factor for b in a.bounds[1:-1]] for a in axes]
