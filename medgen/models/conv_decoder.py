"""ConvDecoder: a fully configurable convolutional decoder from a latent vector to an image or volume.

Usable as a GAN generator or as the decoder half of an autoencoder. Every architectural choice is a
field of :class:`ConvDecoderConfig`, so a JSON file describes a model completely::

    cfg = ConvDecoderConfig(latent_dim=64, hidden_dims=(64, 32, 16), output_size=50, norm="group",
                            upsample="pixel_shuffle", num_res_blocks=1, attention_resolutions=(12,))
    decoder = ConvDecoder.from_config(cfg)
    decoder(torch.randn(4, 64)).shape   # (4, 1, 50, 50)

Data flow (``D = spatial_dims``)::

    z (B, latent_dim) -> Linear -> (B, hidden_dims[0], *init_size) -> act
      -> for each entry c of hidden_dims, one stage:
           upsample x stride to c channels (+ shortcut from the lower-resolution input if skip_connections)
           -> num_res_blocks residual units -> dense block (num_dense_layers) -> self-attention (if asked)
      -> output conv to output_channels -> centre-crop (or interpolate) to exactly output_size
      -> final_activation
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN, Convolution, DenseBlock, SubpixelUpsample, UpSample
from monai.networks.blocks.spatialattention import SpatialAttentionBlock
from monai.networks.layers.utils import get_act_layer
from monai.networks.utils import icnr_init
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from medgen.config.core import ConfigError, JsonConfig, check_types, from_dict
from medgen.models.layers import CropPad

__all__ = ["ConvDecoder", "ConvDecoderConfig"]

NORMS = ("batch", "group", "instance", "layer", "none")
UPSAMPLES = ("transpose", "nearest", "bilinear", "trilinear", "pixel_shuffle")
FINAL_ACTIVATIONS = ("sigmoid", "tanh", "none")


def _as_tuple(value: int | Sequence[int], n: int, key: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    out = tuple(int(v) for v in value)
    if len(out) != n:
        raise ConfigError(f"{key}={list(out)} needs {n} entries (spatial_dims={n}) or a single integer")
    return out


@dataclass
class ConvDecoderConfig(JsonConfig):
    """Every setting of a :class:`ConvDecoder` (the constructor takes the same names).

    Args:
        latent_dim: length of the latent vector.
        hidden_dims: channels of each upsampling stage, from the lowest resolution to the highest; one
            stage (one ``x stride`` upsampling) per entry.
        output_size: exact spatial size of the output; an int means the same size on every axis.
            Any size works, odd ones included.
        output_channels: channels of the output (1 for radiographs).
        spatial_dims: 2 (images) or 3 (volumes).
        init_size: spatial size after the linear projection; ``None`` picks the smallest size whose
            upsampled result covers ``output_size`` (the excess is centre-cropped). A user size that falls
            short is interpolated up to ``output_size``.
        activation: hidden activation, a MONAI ``Act`` name (``"relu"``, ``"leakyrelu"``, ``"gelu"``,
            ``"swish"``, ...) or ``[name, {kwargs}]``.
        final_activation: ``"sigmoid"`` (output in [0, 1]), ``"tanh"`` ([-1, 1]) or ``"none"``.
        dropout_rate: dropout after every hidden convolution (0 disables).
        kernel_size: kernel of every convolution.
        stride: upsampling factor of each stage (1 keeps the size).
        padding: padding of the upsampling convolution; ``None`` keeps the size exactly ``x stride``.
            Other convolutions always preserve their input size.
        dilation: dilation of every convolution (larger receptive field at the same cost).
        bias: bias in the hidden convolutions and the projection (the output convolution always has one).
        norm: ``"batch"``, ``"group"`` (``norm_num_groups`` groups), ``"instance"``, ``"layer"`` (over
            channels and space of each sample, i.e. GroupNorm with one group) or ``"none"``.
        norm_num_groups: groups for ``norm="group"`` and for the attention blocks' GroupNorm; reduced to
            ``gcd(norm_num_groups, channels)`` where it does not divide a layer's channels.
        upsample: ``"transpose"`` (transposed convolution), ``"nearest"``, ``"bilinear"`` (``"trilinear"``
            in 3D; both names accepted) interpolation followed by a convolution, or ``"pixel_shuffle"``
            (convolution to ``c * stride**D`` channels, then sub-pixel shuffle, ICNR-initialised).
        num_res_blocks: residual units (conv-norm-act-conv-norm + identity, act) after each upsampling.
        skip_connections: add to each stage's output its lower-resolution input, interpolated to the new size
            and projected by a 1x1 convolution when channels differ (a residual path across the upsampling).
        num_dense_layers: densely connected convolutions per stage (each sees the concatenation of the stage
            features and all earlier dense outputs), followed by a 1x1 transition back to the stage channels.
        dense_growth_rate: channels added by each dense layer; ``None`` means half the stage channels.
        attention_resolutions: add a self-attention block (GroupNorm + multi-head attention + residual, MONAI
            ``SpatialAttentionBlock``) after every stage whose largest spatial extent is in this list.
        attention_heads: heads of each attention block; must divide the stage channels.
        spectral_norm: spectral normalisation of every convolution and linear weight (GAN stability).
        separable: depthwise-separable convolutions (per-channel spatial conv + 1x1 pointwise conv).
    """

    latent_dim: int = 128
    hidden_dims: tuple[int, ...] = (256, 128, 64, 32)
    output_size: int | tuple[int, ...] = 64
    output_channels: int = 1
    spatial_dims: Literal[2, 3] = 2
    init_size: int | tuple[int, ...] | None = None
    activation: str | tuple[Any, ...] = "relu"
    final_activation: Literal[FINAL_ACTIVATIONS] = "sigmoid"
    dropout_rate: float = 0.0
    kernel_size: int = 3
    stride: int = 2
    padding: int | None = None
    dilation: int = 1
    bias: bool = True
    norm: Literal[NORMS] = "batch"
    norm_num_groups: int = 8
    upsample: Literal[UPSAMPLES] = "transpose"
    num_res_blocks: int = 0
    skip_connections: bool = False
    num_dense_layers: int = 0
    dense_growth_rate: int | None = None
    attention_resolutions: tuple[int, ...] = ()
    attention_heads: int = 1
    spectral_norm: bool = False
    separable: bool = False

    def __post_init__(self) -> None:
        # JSON gives lists; normalise so that a config equals its JSON round trip.
        self.hidden_dims = tuple(int(c) for c in self.hidden_dims)
        if not isinstance(self.output_size, int):
            self.output_size = tuple(int(s) for s in self.output_size)
        if self.init_size is not None and not isinstance(self.init_size, int):
            self.init_size = tuple(int(s) for s in self.init_size)
        if not isinstance(self.activation, str):
            name, *rest = self.activation
            self.activation = (name, dict(rest[0])) if rest else name
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if self.final_activation is None:
            self.final_activation = "none"

    def validate(self, prefix: str = "") -> None:
        """Raise :class:`~medgen.config.ConfigError` naming the key (after ``prefix``) when a setting is invalid,
        including the ones only the built network shows (stage sizes, attention placement)."""
        check_types(self, prefix)

        def need(cond: bool, key: str, rule: str) -> None:
            if not cond:
                raise ConfigError(f"{prefix}{key}={json.dumps(getattr(self, key))} {rule}")

        need(self.latent_dim >= 1, "latent_dim", "must be at least 1")
        need(len(self.hidden_dims) >= 1 and min(self.hidden_dims) >= 1, "hidden_dims",
             "needs at least one entry, all at least 1")
        dims = self.spatial_dims
        need(min(_as_tuple(self.output_size, dims, f"{prefix}output_size")) >= 1, "output_size", "must be at least 1")
        if self.init_size is not None:
            need(min(_as_tuple(self.init_size, dims, f"{prefix}init_size")) >= 1, "init_size",
                 "must be at least 1, or null")
        need(self.output_channels >= 1, "output_channels", "must be at least 1")
        need(0.0 <= self.dropout_rate < 1.0, "dropout_rate", "must be in [0, 1)")
        need(self.kernel_size >= 1, "kernel_size", "must be at least 1")
        need(self.stride >= 1, "stride", "must be at least 1")
        need(self.padding is None or self.padding >= 0, "padding", "must be at least 0, or null (size-preserving)")
        need(self.dilation >= 1, "dilation", "must be at least 1")
        need(self.norm_num_groups >= 1, "norm_num_groups", "must be at least 1")
        need(self.num_res_blocks >= 0, "num_res_blocks", "must not be negative")
        need(self.num_dense_layers >= 0, "num_dense_layers", "must not be negative")
        need(self.dense_growth_rate is None or self.dense_growth_rate >= 1, "dense_growth_rate",
             "must be at least 1, or null")
        need(self.attention_heads >= 1, "attention_heads", "must be at least 1")
        try:
            get_act_layer(self.activation)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{prefix}activation={json.dumps(self.activation)} is not a MONAI activation "
                f"(e.g. \"relu\", \"leakyrelu\", [\"leakyrelu\", {{\"negative_slope\": 0.2}}], \"gelu\", \"swish\"): {e}"
            ) from None
        resolutions = [max(s) for s in self.geometry(prefix)[2]]
        missing = [r for r in self.attention_resolutions if r not in resolutions]
        if missing:
            raise ConfigError(
                f"{prefix}attention_resolutions={list(self.attention_resolutions)}: {missing} match no stage; the "
                f"stages' resolutions (largest spatial extent) are {resolutions}"
            )
        for channels, resolution in zip(self.hidden_dims, resolutions, strict=True):
            if resolution in self.attention_resolutions and channels % self.attention_heads:
                raise ConfigError(
                    f"{prefix}attention_heads={self.attention_heads} must divide the {channels} channels of the stage "
                    f"with attention at resolution {resolution}; change {prefix}attention_heads or {prefix}hidden_dims"
                )

    def geometry(self, prefix: str = "") -> tuple[tuple[int, ...], tuple[int, ...], list[tuple[int, ...]]]:
        """``(output_size, init_size, stage_sizes)`` per axis: the exact output size, the size after the linear
        projection (computed when ``init_size`` is null) and the size after each stage.

        Raises:
            ConfigError: no size works with these settings (the key named after ``prefix``).
        """
        dims = self.spatial_dims
        output_size = _as_tuple(self.output_size, dims, f"{prefix}output_size")
        if self.init_size is not None:
            init_size = _as_tuple(self.init_size, dims, f"{prefix}init_size")
        else:
            init_size = tuple(self._auto_init_size(s, prefix) for s in output_size)
        sizes, cur = [], init_size
        for _ in self.hidden_dims:
            cur = tuple(_stage_size(self, n) for n in cur)
            if min(cur) < 1:
                raise ConfigError(
                    f"{prefix}kernel_size={self.kernel_size}, {prefix}padding={json.dumps(self.padding)} and "
                    f"{prefix}dilation={self.dilation} shrink the feature map to nothing; set {prefix}padding=null "
                    f"or a larger {prefix}init_size"
                )
            sizes.append(cur)
        return output_size, init_size, sizes

    def _auto_init_size(self, target: int, prefix: str) -> int:
        def final(n: int) -> int:
            for _ in self.hidden_dims:
                n = _stage_size(self, n)
            return n

        for n in range(1, 4 * target + 64):
            if final(n) >= target:
                return n
        raise ConfigError(
            f"no {prefix}init_size reaches {prefix}output_size {target} with {prefix}stride={self.stride} and "
            f"{prefix}padding={json.dumps(self.padding)}; set {prefix}init_size, or {prefix}padding=null"
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "") -> ConvDecoderConfig:
        """Build from JSON data and validate it; ``use_batch_norm`` (true/false) is another name for ``norm``
        ("batch"/"none"). Errors name the key after ``prefix`` (where the decoder's keys sit in a larger config)."""
        data = dict(data)
        if "use_batch_norm" in data:
            flag = data.pop("use_batch_norm")
            if "norm" in data:
                raise ConfigError(f"give either {prefix}norm or {prefix}use_batch_norm, not both")
            if not isinstance(flag, bool):
                raise ConfigError(f"{prefix}use_batch_norm={json.dumps(flag)} must be true or false")
            data["norm"] = "batch" if flag else "none"
        cfg = from_dict(cls, data, prefix)
        cfg.validate(prefix)
        return cfg


# ---------------------------------------------------------------------------------------------- blocks
def _norm_arg(cfg: ConvDecoderConfig, channels: int) -> tuple | str | None:
    if cfg.norm == "none":
        return None
    if cfg.norm == "batch":
        return "batch"
    if cfg.norm == "instance":
        return ("instance", {"affine": True})
    groups = 1 if cfg.norm == "layer" else math.gcd(cfg.norm_num_groups, channels)
    return ("group", {"num_groups": groups})


def _adn(cfg: ConvDecoderConfig, channels: int, act: bool = True) -> ADN:
    """Norm -> dropout -> activation, as MONAI ``Convolution`` orders them ("NDA")."""
    return ADN(
        ordering="NDA",
        in_channels=channels,
        act=cfg.activation if act else None,
        norm=_norm_arg(cfg, channels),
        norm_dim=cfg.spatial_dims,
        dropout=cfg.dropout_rate or None,
        dropout_dim=1,
    )


def _conv(
    cfg: ConvDecoderConfig,
    c_in: int,
    c_out: int,
    *,
    kernel_size: int | None = None,
    stride: int = 1,
    padding: int | str = "same",
    transposed: bool = False,
    output_padding: int = 0,
    bias: bool | None = None,
    separable: bool | None = None,
) -> nn.Module:
    """One convolution, or a depthwise + pointwise pair when ``separable`` (MONAI has no separable block)."""
    k = cfg.kernel_size if kernel_size is None else kernel_size
    bias = cfg.bias if bias is None else bias
    separable = cfg.separable if separable is None else separable

    def spatial_conv(co: int, groups: int, b: bool) -> Convolution:
        """The k-sized (possibly strided / transposed / dilated) convolution."""
        return Convolution(
            cfg.spatial_dims,
            c_in,
            co,
            strides=stride,
            kernel_size=k,
            padding=padding,
            dilation=cfg.dilation if k > 1 else 1,
            groups=groups,
            bias=b,
            conv_only=True,
            is_transposed=transposed,
            output_padding=output_padding if transposed else None,
        )

    if not separable or k == 1:
        return spatial_conv(c_out, 1, bias)
    pointwise = Convolution(cfg.spatial_dims, c_in, c_out, kernel_size=1, padding=0, bias=bias, conv_only=True)
    # depthwise: one spatial filter per channel; pointwise: channel mixing
    return nn.Sequential(OrderedDict(depthwise=spatial_conv(c_in, c_in, False), pointwise=pointwise))


def _transpose_padding(cfg: ConvDecoderConfig) -> tuple[int, int]:
    """(padding, output_padding) of the upsampling transposed convolution."""
    s, d, k = cfg.stride, cfg.dilation, cfg.kernel_size
    reach = d * (k - 1)
    p = cfg.padding if cfg.padding is not None else max(0, -((s - 1 - reach) // 2))
    # output_padding makes the output exactly in * stride when the padding allows it; PyTorch requires it
    # to be smaller than max(stride, dilation).
    op = min(max(s - 1 - reach + 2 * p, 0), max(s, d) - 1)
    return p, op


def _stage_size(cfg: ConvDecoderConfig, n: int) -> int:
    """Spatial size after one stage whose input is ``n`` (the other convolutions preserve size)."""
    s, d, k = cfg.stride, cfg.dilation, cfg.kernel_size
    reach = d * (k - 1)
    if cfg.upsample == "transpose":
        p, op = _transpose_padding(cfg)
        return (n - 1) * s - 2 * p + reach + op + 1
    shrink = 0 if cfg.padding is None else 2 * cfg.padding - reach
    if cfg.upsample == "pixel_shuffle":
        return (n + shrink) * s
    return n * s + shrink


class _Shortcut(nn.Module):
    """Lower-resolution input -> interpolated to the stage output size -> 1x1 conv if channels differ."""

    def __init__(self, cfg: ConvDecoderConfig, c_in: int, c_out: int) -> None:
        super().__init__()
        self.proj = (
            _conv(cfg, c_in, c_out, kernel_size=1, padding=0, separable=False) if c_in != c_out else nn.Identity()
        )

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.proj(F.interpolate(x, size=tuple(size), mode="nearest"))


class _ResidualUnit(nn.Module):
    """conv-norm-act-conv-norm + identity, then act (hand-written so convolutions can be separable)."""

    def __init__(self, cfg: ConvDecoderConfig, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(cfg, channels, channels),
            _adn(cfg, channels),
            _conv(cfg, channels, channels),
            _adn(cfg, channels, act=False),
        )
        self.act = get_act_layer(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + x)


class _Stage(nn.Module):
    """One resolution step: upsample, optional shortcut, residual units, dense block, attention."""

    def __init__(self, cfg: ConvDecoderConfig, c_in: int, c_out: int, attention: bool) -> None:
        super().__init__()
        dims = cfg.spatial_dims
        if cfg.upsample == "transpose":
            p, op = _transpose_padding(cfg)
            self.up = nn.Sequential(
                _conv(cfg, c_in, c_out, stride=cfg.stride, padding=p, transposed=True, output_padding=op),
                _adn(cfg, c_out),
            )
        elif cfg.upsample == "pixel_shuffle":
            pad = "same" if cfg.padding is None else cfg.padding
            conv = _conv(cfg, c_in, c_out * cfg.stride**dims, padding=pad)
            # ICNR initialisation starts the shuffle as nearest-neighbour upsampling (no checkerboard)
            icnr_init(conv.conv if isinstance(conv, Convolution) else conv.pointwise.conv, cfg.stride)
            self.up = nn.Sequential(
                SubpixelUpsample(dims, None, c_out, scale_factor=cfg.stride, conv_block=conv, apply_pad_pool=True),
                _adn(cfg, c_out),
            )
        else:
            interp = "nearest" if cfg.upsample == "nearest" else "linear"  # MONAI maps linear to bi/trilinear
            self.up = nn.Sequential(
                UpSample(
                    dims,
                    scale_factor=cfg.stride,
                    mode="nontrainable",
                    pre_conv=None,
                    interp_mode=interp,
                    align_corners=None if interp == "nearest" else False,
                ),
                _conv(cfg, c_in, c_out, padding="same" if cfg.padding is None else cfg.padding),
                _adn(cfg, c_out),
            )
        self.shortcut = _Shortcut(cfg, c_in, c_out) if cfg.skip_connections else None
        self.res = nn.Sequential(*[_ResidualUnit(cfg, c_out) for _ in range(cfg.num_res_blocks)])
        self.dense: nn.Module | None = None
        if cfg.num_dense_layers > 0:
            g = cfg.dense_growth_rate or max(1, c_out // 2)
            layers = [nn.Sequential(_conv(cfg, c_out + i * g, g), _adn(cfg, g)) for i in range(cfg.num_dense_layers)]
            total = c_out + cfg.num_dense_layers * g
            self.dense = nn.Sequential(
                DenseBlock(layers),
                _conv(cfg, total, c_out, kernel_size=1, padding=0, separable=False),  # transition
                _adn(cfg, c_out),
            )
        self.attn: nn.Module | None = None
        if attention:  # attention_heads divides c_out: checked by ConvDecoderConfig.validate
            self.attn = SpatialAttentionBlock(
                dims,
                c_out,
                num_head_channels=c_out // cfg.attention_heads,
                norm_num_groups=math.gcd(cfg.norm_num_groups, c_out),
                use_flash_attention=True,  # PyTorch SDPA: memory-efficient attention kernels
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.shortcut is not None:
            h = h + self.shortcut(x, h.shape[2:])
        h = self.res(h)
        if self.dense is not None:
            h = self.dense(h)
        if self.attn is not None:
            h = self.attn(h)
        return h


class _Interpolate(nn.Module):
    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = "bilinear" if x.ndim == 4 else "trilinear"
        return F.interpolate(x, size=self.size, mode=mode, align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


# ---------------------------------------------------------------------------------------------- decoder
class ConvDecoder(nn.Module):
    """Latent vector -> image (2D) or volume (3D), every option of :class:`ConvDecoderConfig`.

    Args:
        config: a :class:`ConvDecoderConfig`; or leave it out and pass its fields as keyword arguments.
        kwargs: the :class:`ConvDecoderConfig` fields (``latent_dim``, ``hidden_dims``, ``output_size``, ...).

    :meth:`from_config` also takes a dict or a JSON file path.

    Example:
        >>> dec = ConvDecoder(latent_dim=16, hidden_dims=(16, 8), output_size=(20, 15))
        >>> dec(torch.randn(2, 16)).shape
        torch.Size([2, 1, 20, 15])
    """

    def __init__(self, config: ConvDecoderConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("ConvDecoder: pass either a ConvDecoderConfig or keyword settings, not both.")
        cfg = config if config is not None else ConvDecoderConfig(**kwargs)
        cfg.validate()
        self.config = cfg
        dims = cfg.spatial_dims
        self.output_size, self.init_size, self.stage_sizes = cfg.geometry()
        resolutions = [max(s) for s in self.stage_sizes]

        c0 = cfg.hidden_dims[0]
        self.project = nn.Linear(cfg.latent_dim, c0 * math.prod(self.init_size), bias=cfg.bias)
        # no norm on the projection: with a 1x1 initial map instance/layer norm would zero it out
        self.project_act = get_act_layer(cfg.activation)
        chans = [c0, *cfg.hidden_dims]
        self.stages = nn.ModuleList(
            _Stage(cfg, chans[i], chans[i + 1], attention=resolutions[i] in cfg.attention_resolutions)
            for i in range(len(cfg.hidden_dims))
        )
        self.head = _conv(cfg, chans[-1], cfg.output_channels, bias=True, separable=False)
        last = self.stage_sizes[-1]
        if last == self.output_size:
            self.resize: nn.Module = nn.Identity()
        elif all(a >= b for a, b in zip(last, self.output_size, strict=True)):
            self.resize = CropPad(self.output_size, dims)
        else:
            self.resize = _Interpolate(self.output_size)
        self.final_activation = {"sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "none": nn.Identity()}[
            cfg.final_activation
        ]

        if cfg.spectral_norm:
            weighted = (nn.Linear, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
            for m in [m for m in self.modules() if isinstance(m, weighted)]:
                _spectral_norm(m)

    @classmethod
    def from_config(cls, config: ConvDecoderConfig | Mapping[str, Any] | str | os.PathLike) -> ConvDecoder:
        """Build from a :class:`ConvDecoderConfig`, a dict or a JSON file path."""
        config = ConvDecoderConfig.coerce(config, "ConvDecoder.from_config")
        return cls(config)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """
        Args:
            z: latent codes ``(B, latent_dim)`` (trailing singleton dims such as ``(B, latent_dim, 1, 1)`` are
                flattened).

        Returns:
            ``(B, output_channels, *output_size)``.
        """
        z = z.flatten(1)
        if z.shape[1] != self.config.latent_dim:
            raise ValueError(
                f"ConvDecoder: expected latent vectors of length {self.config.latent_dim}, got shape {tuple(z.shape)}."
            )
        x = self.project_act(self.project(z).view(z.shape[0], self.config.hidden_dims[0], *self.init_size))
        for stage in self.stages:
            x = stage(x)
        return self.final_activation(self.resize(self.head(x)))
