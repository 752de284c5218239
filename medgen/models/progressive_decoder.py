"""ProgressiveDecoder: a decoder-only generator that grows a learnable latent into one image.

The network holds its own input, a learnable latent ``(1, latent_channels, 1, 1)``, and maps it with
transposed convolutions 1 -> 4 -> 8 -> ... px, refines the channels down to one, then centre-crops to
``output_size`` (the object) and zero-pads to ``input_size`` (the full grid). Fitting the latent and the
weights to an observation turns it into a deep-image-prior style reconstructor (see
``medgen fit-decoder``).

Shapes for ``ProgressiveDecoder(input_size=1024, output_size=512)`` (the defaults)::

    latent        [1, 1024, 1, 1]
    initial       [1, 512, 4, 4]
    upsample 1-7  [1, 256, 8, 8] ... [1, 4, 512, 512]
    refinement    [1, 2, 512, 512], [1, 1, 512, 512]
    crop          [1, 1, 512, 512]
    pad           [1, 1, 1024, 1024]
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from monai.networks.blocks import Convolution
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.checkpoint import checkpoint

from medgen.config.core import ConfigError, JsonConfig, check_types, from_dict
from medgen.models.layers import CropPad

__all__ = ["ProgressiveDecoder", "ProgressiveDecoderConfig"]

OUTPUT_ACTIVATIONS = ("sigmoid", "tanh", "relu", "none")
INIT_METHODS = ("default", "xavier", "kaiming", "normal")
# Spatial size produced by the initial transposed convolution (kernel 4 on a 1x1 latent).
INITIAL_SIZE = 4
# Other names ``from_dict`` (and so ``from_config``) accepts for two keys.
_CONFIG_ALIASES = {"hidden_channels": "channel_progression", "use_batch_norm": "use_bn"}


def _is_power_of_two(n: int) -> bool:
    return isinstance(n, int) and n > 0 and (n & (n - 1)) == 0


@dataclass
class ProgressiveDecoderConfig(JsonConfig):
    """Typed configuration of a :class:`ProgressiveDecoder`; every field is a constructor argument.

    ``None`` fields are computed from ``input_size``/``output_size`` (see the class docstring and
    :meth:`resolved`). :meth:`from_dict` also accepts ``hidden_channels`` for ``channel_progression`` and
    ``use_batch_norm`` for ``use_bn``.
    """

    input_size: int
    output_size: int | None = None
    latent_channels: int | None = None
    channel_progression: list[int] | None = None
    num_upsample_layers: int | None = None
    use_bn: bool = True
    output_activation: Literal[OUTPUT_ACTIVATIONS] = "sigmoid"
    use_amp: bool = False
    activation: str | list[Any] = "relu"
    init_method: Literal[INIT_METHODS] = "default"
    spatial_dims: Literal[2, 3] = 2

    def __post_init__(self) -> None:
        # JSON data comes in as tuples; lists, so that a config equals its JSON round trip
        if self.channel_progression is not None:
            self.channel_progression = [int(c) for c in self.channel_progression]
        if not isinstance(self.activation, str):
            self.activation = list(self.activation)

    def resolved(self, prefix: str = "") -> ProgressiveDecoderConfig:
        """This config with the ``None`` fields computed, after checking every setting.

        Raises:
            ConfigError: an invalid setting, naming the key after ``prefix``.
        """
        check_types(self, prefix)
        p, input_size = prefix, self.input_size
        if not _is_power_of_two(input_size):
            raise ConfigError(
                f"{p}input_size={input_size} must be a power of two (64, 128, 256, 512, 1024, ...); use the next "
                f"power of two as {p}input_size and the image size as {p}output_size (the output is padded to the grid)"
            )
        output_size = input_size if self.output_size is None else self.output_size
        if output_size < 1:
            raise ConfigError(f"{p}output_size={output_size} must be at least 1, or null")
        if output_size > input_size:
            raise ConfigError(
                f"{p}output_size={output_size} must be <= {p}input_size={input_size}; raise {p}input_size to "
                f"{1 << (output_size - 1).bit_length()} or lower {p}output_size"
            )
        latent_channels = input_size if self.latent_channels is None else self.latent_channels
        if latent_channels < 1:
            raise ConfigError(f"{p}latent_channels={latent_channels} must be at least 1, or null")
        progression = self.channel_progression
        if progression is None:
            progression = default_channel_progression(latent_channels)
        if len(progression) < 2 or progression[-1] != 1:
            raise ConfigError(
                f"{p}channel_progression={progression} must end with 1 (the output channel) and have at least one "
                "hidden entry before it, e.g. [64, 32, 16, 1]"
            )
        if min(progression) < 1:
            raise ConfigError(f"{p}channel_progression={progression}: every entry must be at least 1")
        # smallest n with INITIAL_SIZE * 2**n >= output_size
        needed = (math.ceil(output_size / INITIAL_SIZE) - 1).bit_length()
        layers = needed if self.num_upsample_layers is None else self.num_upsample_layers
        if layers < needed:
            raise ConfigError(
                f"{p}num_upsample_layers={layers} generates {INITIAL_SIZE * 2**layers} px, less than "
                f"{p}output_size={output_size}; use at least {needed} (or null for automatic)"
            )
        return dataclasses.replace(self, output_size=output_size, latent_channels=latent_channels,
                                   channel_progression=progression, num_upsample_layers=layers)

    def validate(self, prefix: str = "") -> None:
        """Raise :class:`~medgen.config.ConfigError` naming the key (after ``prefix``) for an invalid setting."""
        self.resolved(prefix)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "") -> ProgressiveDecoderConfig:
        """Build from JSON data, accepting the aliases above, and validate it. Errors name the key after
        ``prefix`` (where the decoder's keys sit in a larger config)."""
        data = dict(data)
        for alias, name in _CONFIG_ALIASES.items():
            if alias in data:
                if name in data:
                    raise ConfigError(f"give either {prefix}{name} or {prefix}{alias}, not both")
                data[name] = data.pop(alias)
        cfg = from_dict(cls, data, prefix)
        cfg.validate(prefix)
        return cfg


def default_channel_progression(latent_channels: int) -> list[int]:
    """Channels halving from ``latent_channels // 2`` down to 1, e.g. 1024 -> [512, 256, ..., 2, 1]."""
    prog = []
    c = latent_channels // 2
    while c > 1:
        prog.append(c)
        c //= 2
    return prog + [1] if prog else [1, 1]


class ProgressiveDecoder(nn.Module):
    """Decoder-only generator: learnable latent -> progressively upsampled single-channel image.

    Architecture (``D = spatial_dims``, ``hidden = channel_progression[:-1]``):

    * initial: ``ConvTranspose(latent_channels -> hidden[0], kernel 4, stride 1)`` 1 -> 4 px, BN, act;
    * ``num_upsample_layers`` x ``ConvTranspose(kernel 4, stride 2, padding 1)`` doubling the size, BN,
      act; layer ``i`` outputs ``hidden[i]`` channels (the last hidden count repeats when the
      progression is shorter than the number of upsampling layers);
    * refinement: ``Conv(kernel 3, padding 1)`` for the remaining ``hidden`` entries with BN, act, then a
      final ``Conv`` to 1 channel without BN or activation;
    * ``output_activation``, ``CropPad(output_size)``, ``CropPad(input_size)``.

    With the defaults ``latent_channels = input_size``, ``channel_progression`` halves from
    ``latent_channels // 2`` to 1, and ``num_upsample_layers = ceil(log2(output_size / 4))`` so the last
    upsampling layer reaches at least ``output_size`` (a non power-of-two ``output_size`` is centre-cropped).

    The five ways to configure it: all automatic (``input_size``, ``output_size``); manual
    ``latent_channels``; manual ``channel_progression``; everything manual (plus ``num_upsample_layers``);
    from a config with :meth:`from_config`.

    Args:
        input_size: edge of the full square (cube) output grid; a power of two.
        output_size: edge of the reconstructed object, centred in the grid; ``<= input_size``.
            ``None`` means ``input_size``.
        latent_channels: channels of the learnable latent; ``None`` means ``input_size``.
        channel_progression: output channels of the initial, upsampling and refinement layers; must end
            with 1. ``None`` means halving from ``latent_channels // 2``.
        num_upsample_layers: number of 2x upsampling layers; ``None`` means just enough to reach
            ``output_size``.
        use_bn: batch normalisation after every layer but the last.
        output_activation: ``"sigmoid"`` (image in [0, 1]), ``"tanh"``, ``"relu"`` or ``"none"``.
        use_amp: run :meth:`forward` under ``torch.autocast`` (float16 on CUDA, bfloat16 on CPU).
        activation: hidden activation, any MONAI ``Act`` name or ``(name, kwargs)``; default ReLU.
        init_method: ``"default"`` (PyTorch), ``"xavier"``, ``"kaiming"`` or ``"normal"`` (DCGAN N(0, 0.02)).
        spatial_dims: 2 for images, 3 for volumes (cubic grid).

    Raises:
        ConfigError: an invalid setting or combination, naming the argument and how to fix it.

    Example:
        >>> model = ProgressiveDecoder(input_size=64, output_size=48)
        >>> model().shape
        torch.Size([1, 1, 64, 64])
    """

    def __init__(
        self,
        input_size: int,
        output_size: int | None = None,
        latent_channels: int | None = None,
        channel_progression: Sequence[int] | None = None,
        num_upsample_layers: int | None = None,
        use_bn: bool = True,
        output_activation: str = "sigmoid",
        use_amp: bool = False,
        activation: str | Sequence = "relu",
        init_method: str = "default",
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.config = ProgressiveDecoderConfig(
            input_size=input_size,
            output_size=output_size,
            latent_channels=latent_channels,
            channel_progression=None if channel_progression is None else list(channel_progression),
            num_upsample_layers=num_upsample_layers,
            use_bn=use_bn,
            output_activation=output_activation,
            use_amp=use_amp,
            activation=activation,
            init_method=init_method,
            spatial_dims=spatial_dims,
        ).resolved()
        output_size, latent_channels = self.config.output_size, self.config.latent_channels
        channel_progression, num_upsample_layers = self.config.channel_progression, self.config.num_upsample_layers
        self.input_size = input_size
        self.output_size = output_size
        self.latent_channels = latent_channels
        self.channel_progression = list(channel_progression)
        self.num_upsample_layers = num_upsample_layers
        self.use_bn = use_bn
        self.use_amp = use_amp
        self.spatial_dims = spatial_dims

        self.latent = nn.Parameter(torch.randn(1, latent_channels, *([1] * spatial_dims)))
        hidden = self.channel_progression[:-1]
        act = (
            (activation, {"inplace": True})
            if isinstance(activation, str) and activation.lower() == "relu"
            else activation
        )

        def block(c_in: int, c_out: int, *, transposed: bool, kernel: int, stride: int, padding: int, last=False):
            return Convolution(
                spatial_dims,
                c_in,
                c_out,
                strides=stride,
                kernel_size=kernel,
                padding=padding,
                output_padding=0 if transposed else None,
                is_transposed=transposed,
                act=None if last else act,
                norm=("batch" if use_bn and not last else None),
                # a bias before BatchNorm is cancelled by its mean subtraction
                bias=last or not use_bn,
                conv_only=last,
            )

        self.initial = block(latent_channels, hidden[0], transposed=True, kernel=4, stride=1, padding=0)
        ups = [hidden[min(i, len(hidden) - 1)] for i in range(num_upsample_layers + 1)]
        self.upsample = nn.ModuleList(
            block(ups[i], ups[i + 1], transposed=True, kernel=4, stride=2, padding=1)
            for i in range(num_upsample_layers)
        )
        refine = [ups[-1]] + hidden[num_upsample_layers + 1 :] + [1]
        self.refinement = nn.ModuleList(
            block(refine[i], refine[i + 1], transposed=False, kernel=3, stride=1, padding=1, last=i == len(refine) - 2)
            for i in range(len(refine) - 1)
        )
        self.output_activation = {
            "sigmoid": nn.Sigmoid(),
            "tanh": nn.Tanh(),
            "relu": nn.ReLU(),
            "none": nn.Identity(),
        }[output_activation]
        self.crop = CropPad(output_size, spatial_dims)
        self.pad = CropPad(input_size, spatial_dims)

        self.gradient_checkpointing = False
        self._compiled_decode = None
        self._init_weights(init_method)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(
        cls, config: ProgressiveDecoderConfig | Mapping[str, Any] | str | os.PathLike
    ) -> ProgressiveDecoder:
        """Build from a :class:`ProgressiveDecoderConfig`, a dict (aliases accepted) or a JSON file path."""
        config = ProgressiveDecoderConfig.coerce(config, "ProgressiveDecoder.from_config")
        return cls(**dataclasses.asdict(config))

    def _init_weights(self, method: str) -> None:
        if method == "default":
            return
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                if method == "xavier":
                    nn.init.xavier_uniform_(m.weight)
                elif method == "kaiming":
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                else:
                    nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def blocks(self) -> list[nn.Module]:
        """Initial, upsampling and refinement blocks in execution order."""
        return [self.initial, *self.upsample, *self.refinement]

    def layer_shapes(self, batch_size: int = 1) -> list[tuple[str, tuple[int, ...]]]:
        """Shape after every stage, computed from the architecture (no tensor is allocated).

        Returns:
            ``[(name, shape), ...]`` from the latent to the padded output.
        """
        d = self.spatial_dims
        rows = [("latent", (batch_size, self.latent_channels) + (1,) * d)]
        size = INITIAL_SIZE
        rows.append(("initial", (batch_size, self._out_channels(self.initial)) + (size,) * d))
        for i, b in enumerate(self.upsample, 1):
            size *= 2
            rows.append((f"upsample {i}", (batch_size, self._out_channels(b)) + (size,) * d))
        for i, b in enumerate(self.refinement, 1):
            rows.append((f"refinement {i}", (batch_size, self._out_channels(b)) + (size,) * d))
        rows.append((f"crop_pad({self.output_size})", (batch_size, 1) + (self.output_size,) * d))
        rows.append((f"crop_pad({self.input_size})", (batch_size, 1) + (self.input_size,) * d))
        return rows

    @staticmethod
    def _out_channels(block: nn.Module) -> int:
        return block.conv.out_channels

    # ------------------------------------------------------------------ forward
    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not (self.gradient_checkpointing and self.training and torch.is_grad_enabled()):
            return block(x)
        calls = [0]

        def run(inp: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            if calls[0] == 1:
                return block(inp)
            # The backward pass re-runs the block; restore BatchNorm running statistics afterwards so that
            # checkpointing does not apply the momentum update twice.
            saved = [
                (m, {k: v.clone() for k, v in m.named_buffers()}) for m in block.modules() if isinstance(m, _BatchNorm)
            ]
            try:
                return block(inp)
            finally:  # also when PyTorch stops the recomputation early (it raises to do so)
                with torch.no_grad():
                    for m, bufs in saved:
                        for k, v in bufs.items():
                            getattr(m, k).copy_(v)

        return checkpoint(run, x, use_reentrant=False)

    def _decode(self) -> torch.Tensor:
        x = self.latent
        for block in self.blocks:
            x = self._run_block(block, x)
        return self.pad(self.crop(self.output_activation(x)))

    def _decoder_fn(self):
        return self._compiled_decode if self._compiled_decode is not None else self._decode

    def _autocast(self, enabled: bool):
        device_type = self.latent.device.type
        if device_type == "meta":  # shape inspection: autocast has no meta backend
            return contextlib.nullcontext()
        # float16 is the fast path on CUDA; CPU autocast supports bfloat16 only.
        dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=device_type, dtype=dtype, enabled=enabled)

    def forward(self) -> torch.Tensor:
        """Generate the reconstruction from the learnable latent (no input).

        Returns:
            tensor ``(1, 1, *[input_size] * spatial_dims)``; float16/bfloat16 when ``use_amp`` is on.
        """
        with self._autocast(self.use_amp):
            return self._decoder_fn()()

    def generate_fp32(self) -> torch.Tensor:
        """Generate in full float32 precision whatever ``use_amp`` says (for final reconstructions).

        Returns:
            float32 tensor ``(1, 1, *[input_size] * spatial_dims)``.
        """
        with self._autocast(False):
            return self._decoder_fn()().float()

    # ------------------------------------------------------------------ training / inference helpers
    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block's activations in the backward pass instead of storing them.

        Only each block's input is kept; gradients and BatchNorm running statistics are the same as without
        it, at the cost of one more forward pass per block. The saving is large when several layers work at
        the full resolution (a deep refinement stack: about 30% peak memory in ``benchmarks/bench_decoders.py``)
        and small for the default halving progression, whose last layer alone dominates the peak.
        """
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        """Undo :meth:`enable_gradient_checkpointing`."""
        self.gradient_checkpointing = False

    def fuse_conv_bn(self) -> int:
        """Fold every BatchNorm into the convolution before it (eval-mode statistics); in place.

        Returns:
            number of BatchNorm layers removed.
        """
        if self.training:
            raise RuntimeError(
                "ProgressiveDecoder.fuse_conv_bn: call model.eval() first (fusion uses running statistics)."
            )
        fused = 0
        for block in self.blocks:
            norm = getattr(getattr(block, "adn", None), "N", None)
            if isinstance(norm, _BatchNorm):
                transposed = isinstance(block.conv, (nn.ConvTranspose2d, nn.ConvTranspose3d))
                block.conv = fuse_conv_bn_eval(block.conv, norm, transpose=transposed)
                block.adn.N = nn.Identity()
                fused += 1
        return fused

    def compile(self, mode: str = "default", **kwargs: Any) -> ProgressiveDecoder:  # type: ignore[override]
        """Compile the generation with ``torch.compile`` (first call is slow, later calls faster).

        Args:
            mode: ``"default"``, ``"reduce-overhead"`` or ``"max-autotune"``.
            kwargs: further ``torch.compile`` arguments (``backend``, ``fullgraph``, ...).

        Returns:
            self.
        """
        if not hasattr(torch, "compile"):
            raise RuntimeError(f"torch.compile needs PyTorch >= 2.0 (found {torch.__version__}); skip compilation.")
        self._compiled_decode = torch.compile(self._decode, mode=mode, **kwargs)
        return self

    def prepare_for_inference(
        self, compile_mode: str | None = None, free_memory: bool = True, channels_last: bool = True
    ) -> ProgressiveDecoder:
        """Optimise for inference: eval mode, Conv-BN fusion, frozen parameters, optional ``torch.compile``.

        The output equals the eval-mode output before the call (up to float rounding). After fusion there
        is no BatchNorm left, so the model should not be trained further.

        Args:
            compile_mode: ``torch.compile`` mode, or ``None`` to skip compilation.
            free_memory: release cached CUDA memory (and run the garbage collector).
            channels_last: store weights and activations channels-last, which the oneDNN/cuDNN transposed
                convolutions run markedly faster (values are unchanged, only the memory layout).

        Returns:
            self.
        """
        self.eval()
        self.fuse_conv_bn()
        self.requires_grad_(False)
        if channels_last:
            self.to(memory_format=torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d)
        if compile_mode is not None:
            self.compile(compile_mode)
        if free_memory:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return self

    @torch.no_grad()
    def benchmark(self, num_iterations: int = 100, warmup: int = 10, measure_memory: bool = True) -> dict[str, float]:
        """Time the generation (no gradients) on the model's current device.

        Args:
            num_iterations: timed forward passes.
            warmup: untimed passes first (compilation, allocator warm-up).
            measure_memory: report peak CUDA memory of the timed passes (only measurable on CUDA).

        Returns:
            ``avg_time_ms``, ``fps``, ``num_parameters`` and, on CUDA with ``measure_memory``, ``memory_mb``.
        """
        if num_iterations < 1:
            raise ValueError(f"benchmark: num_iterations must be >= 1, got {num_iterations}.")
        cuda = self.latent.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        for _ in range(warmup):
            self()
        sync()
        if cuda and measure_memory:
            torch.cuda.reset_peak_memory_stats(self.latent.device)
        start = time.perf_counter()
        for _ in range(num_iterations):
            self()
        sync()
        elapsed = time.perf_counter() - start
        result: dict[str, float] = {
            "avg_time_ms": 1000.0 * elapsed / num_iterations,
            "fps": num_iterations / elapsed,
            "num_parameters": sum(p.numel() for p in self.parameters()),
        }
        if cuda and measure_memory:
            result["memory_mb"] = torch.cuda.max_memory_allocated(self.latent.device) / 2**20
        return result

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"input_size={c.input_size}, output_size={c.output_size}, latent_channels={c.latent_channels}, "
            f"num_upsample_layers={c.num_upsample_layers}, channel_progression={c.channel_progression}"
        )
