"""DCGAN-style generator and WGAN-GP critic for 2D grayscale radiographs (the WGAN-GP design).

The generator maps ``z`` (B, z_dim) through a dense layer to ``g_channels`` x 4 x 4, then doubles the
resolution with transposed convolutions (BatchNorm + ReLU, channels halving down to a floor) until
``image_size``, ending in Tanh so outputs lie in [-1, 1]. The critic mirrors it with strided convolutions,
InstanceNorm(affine) and LeakyReLU(0.2) and returns one unbounded score per image (no sigmoid, no
BatchNorm: BatchNorm couples the samples of a batch, which breaks the per-sample gradient penalty).

``build_generator`` / ``build_critic`` build either network from the plain-dict ``generator`` / ``critic``
sections of a WGAN config; ``generator.type`` may also name the ConvDecoder or ProgressiveDecoder backbone,
wrapped by :class:`DecoderGenerator` into the same interface (``z_dim``, ``sample_latent``, ``forward(z)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn
from monai.networks.utils import normal_init
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from medgen.config.core import ConfigError
from medgen.models.conv_decoder import ConvDecoder, ConvDecoderConfig
from medgen.models.progressive_decoder import ProgressiveDecoder, ProgressiveDecoderConfig

__all__ = [
    "SelfAttention2d",
    "WGANGenerator",
    "WGANCritic",
    "DecoderGenerator",
    "build_generator",
    "build_critic",
    "GENERATOR_TYPES",
    "to_unit_range",
]

MIN_IMAGE_SIZE = 64
MAX_IMAGE_SIZE = 256


def _check_image_size(image_size: int, where: str) -> int:
    """Return ``image_size`` if it is a power of two in [64, 256], else raise a ValueError naming ``where``."""
    if (
        not isinstance(image_size, int)
        or isinstance(image_size, bool)
        or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE
        or image_size & (image_size - 1)
    ):
        raise ValueError(
            f"{where}: image_size must be a power of two between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} "
            f"(64, 128 or 256), got {image_size!r}. Set wgan_train.image_size to one of these values."
        )
    return image_size


def _check_attention_resolutions(resolutions: Iterable[int], allowed: list[int], where: str) -> set[int]:
    """Validate self-attention resolutions against those the network actually has."""
    chosen = {int(r) for r in resolutions}
    bad = sorted(chosen - set(allowed))
    if bad:
        raise ValueError(
            f"{where}: self_attention_resolutions {bad} do not exist in this network; "
            f"for this image_size choose from {allowed}."
        )
    return chosen


class SelfAttention2d(nn.Module):
    """SAGAN self-attention over all spatial positions, with a learnable gate initialised to 0.

    Written here rather than reusing ``monai.networks.blocks.SABlock``: SAGAN's zero-initialised residual
    gate lets the network start as a plain conv net (a known GAN stabiliser), its 1x1 convs take spectral norm
    like every other critic layer, and the explicit softmax keeps double backward (gradient penalty) working
    on every device, which fused ``scaled_dot_product_attention`` kernels do not (SABlock also needs einops).

    Args:
        channels: number of input (and output) channels C.
        reduction: query/key channels are ``max(C // reduction, 1)``.

    Shapes:
        input (B, C, H, W) -> output (B, C, H, W).
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        self.query = nn.Conv2d(channels, inner, kernel_size=1)
        self.key = nn.Conv2d(channels, inner, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.scale = inner**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        k = self.key(x).flatten(2)  # (B, C', HW)
        v = self.value(x).flatten(2)  # (B, C, HW)
        attn = torch.softmax(torch.bmm(q, k) * self.scale, dim=-1)  # (B, HW, HW)
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * out


class WGANGenerator(nn.Module):
    """DCGAN generator: dense z -> g_channels x 4 x 4, transposed-conv upsampling to ``image_size``, Tanh.

    Args:
        z_dim: latent dimension.
        g_channels: channels of the 4x4 map; each upsampling block halves them.
        image_size: output height and width, a power of two in [64, 256].
        out_channels: output image channels (1 for grayscale radiographs).
        self_attention_resolutions: resolutions (4 .. image_size // 2) after which a :class:`SelfAttention2d`
            block is inserted, e.g. ``(16, 32)``.
        min_channels: floor for the halving channel count.
        init_weights: apply the DCGAN initialisation (MONAI's ``normal_init``: conv/linear weights ~ N(0, 0.02), BatchNorm weights ~ N(1, 0.02), biases 0) at construction.

    Shapes:
        input ``z`` (B, z_dim) (or (B, z_dim, 1, 1)) -> output (B, out_channels, image_size, image_size) in [-1, 1].

    Note:
        The dense layer is followed by BatchNorm1d, so training mode needs batches of at least 2; sample in
        ``eval()`` mode.
    """

    def __init__(
        self,
        z_dim: int = 128,
        g_channels: int = 512,
        image_size: int = 64,
        out_channels: int = 1,
        self_attention_resolutions: Iterable[int] = (),
        min_channels: int = 32,
        init_weights: bool = True,
    ) -> None:
        super().__init__()
        image_size = _check_image_size(image_size, "WGANGenerator")
        for name, value in (("z_dim", z_dim), ("g_channels", g_channels), ("out_channels", out_channels)):
            if int(value) < 1:
                raise ValueError(f"WGANGenerator: {name} must be >= 1, got {value!r}.")
        if min_channels < 1:
            raise ValueError(f"WGANGenerator: min_channels must be >= 1, got {min_channels!r}.")
        n_up = int(math.log2(image_size // 4))
        allowed = [4 * 2**i for i in range(n_up)]  # resolutions of the maps before the last (Tanh) block
        attn_at = _check_attention_resolutions(self_attention_resolutions, allowed, "WGANGenerator")

        self.z_dim = z_dim
        self.image_size = image_size
        self.out_channels = out_channels
        self.g_channels = g_channels
        self.self_attention_resolutions = tuple(sorted(attn_at))

        self.fc = nn.Sequential(
            nn.Linear(z_dim, g_channels * 4 * 4), nn.BatchNorm1d(g_channels * 4 * 4), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        ch, res = g_channels, 4
        if res in attn_at:
            layers.append(SelfAttention2d(ch))
        for i in range(n_up):
            last = i == n_up - 1
            out_ch = out_channels if last else max(ch // 2, min_channels)
            # kernel 4, stride 2, padding 1 exactly doubles H and W without checkerboard-prone odd overlaps
            layers.append(nn.ConvTranspose2d(ch, out_ch, kernel_size=4, stride=2, padding=1, bias=last))
            res *= 2
            if last:
                layers.append(nn.Tanh())
            else:
                layers += [nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
                if res in attn_at:
                    layers.append(SelfAttention2d(out_ch))
            ch = out_ch
        self.blocks = nn.Sequential(*layers)
        if init_weights:
            self.apply(normal_init)

    def sample_latent(
        self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``z`` ~ N(0, I) of shape (batch_size, z_dim); pass ``generator`` for a fixed-noise grid."""
        device = device if device is not None else self.fc[0].weight.device
        return torch.randn(batch_size, self.z_dim, device=device, generator=generator)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 4:  # accept DCGAN-style (B, z_dim, 1, 1) noise
            z = z.flatten(1)
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"WGANGenerator expects z of shape (B, {self.z_dim}), got {tuple(z.shape)}.")
        x = self.fc(z).view(z.shape[0], -1, 4, 4)
        return self.blocks(x)


class WGANCritic(nn.Module):
    """WGAN-GP critic: strided convs with InstanceNorm(affine) + LeakyReLU(0.2), one unbounded score per image.

    Each block halves the resolution (kernel 4, stride 2, padding 1) and doubles the channels (capped at
    ``max_channels``) until 4x4; a final 4x4 convolution without padding gives the score. The first block has
    no normalisation (DCGAN practice: it sees raw intensities).

    Args:
        d_channels: channels of the first block.
        image_size: input height and width, a power of two in [64, 256].
        in_channels: input image channels.
        spectral_norm: wrap every conv (and attention projection) in
            ``torch.nn.utils.parametrizations.spectral_norm``.
        self_attention_resolutions: block output resolutions (4 .. image_size // 2) after which a
            :class:`SelfAttention2d` block is inserted.
        max_channels: cap for the doubling channels; default ``8 * d_channels``.
        norm: ``"instance"`` (InstanceNorm2d(affine=True)) or ``"none"`` (common with spectral norm).
        init_weights: apply the DCGAN initialisation (``normal_init``, before spectral norm is registered).

    Shapes:
        input (B, in_channels, image_size, image_size) -> output (B,) scores;
        :meth:`features` -> (B, C_last * 16), the flattened 4x4 map the score is computed from.
    """

    def __init__(
        self,
        d_channels: int = 64,
        image_size: int = 64,
        in_channels: int = 1,
        spectral_norm: bool = False,
        self_attention_resolutions: Iterable[int] = (),
        max_channels: int | None = None,
        norm: str = "instance",
        init_weights: bool = True,
    ) -> None:
        super().__init__()
        image_size = _check_image_size(image_size, "WGANCritic")
        for name, value in (("d_channels", d_channels), ("in_channels", in_channels)):
            if int(value) < 1:
                raise ValueError(f"WGANCritic: {name} must be >= 1, got {value!r}.")
        if norm not in ("instance", "none"):
            raise ValueError(
                f"WGANCritic: norm must be 'instance' or 'none', got {norm!r} "
                "(BatchNorm is not offered: it breaks the per-sample gradient penalty)."
            )
        max_channels = 8 * d_channels if max_channels is None else max_channels
        n_down = int(math.log2(image_size // 4))
        allowed = [image_size // 2 ** (i + 1) for i in range(n_down)]
        attn_at = _check_attention_resolutions(self_attention_resolutions, allowed, "WGANCritic")

        self.image_size = image_size
        self.in_channels = in_channels
        self.self_attention_resolutions = tuple(sorted(attn_at))
        self.spectral_norm = spectral_norm

        layers: list[nn.Module] = []
        ch, res = in_channels, image_size
        for i in range(n_down):
            out_ch = min(d_channels * 2**i, max_channels)
            layers.append(nn.Conv2d(ch, out_ch, kernel_size=4, stride=2, padding=1, bias=i == 0 or norm == "none"))
            if i > 0 and norm == "instance":
                layers.append(nn.InstanceNorm2d(out_ch, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            res //= 2
            if res in attn_at:
                layers.append(SelfAttention2d(out_ch))
            ch = out_ch
        self.blocks = nn.Sequential(*layers)
        self.feature_channels = ch
        self.head = nn.Conv2d(ch, 1, kernel_size=4, stride=1, padding=0)
        if init_weights:
            self.apply(normal_init)
        if spectral_norm:
            for m in list(self.modules()):
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    _spectral_norm(m)

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"WGANCritic expects input of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}."
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, C_last * 16) for feature matching; ``head`` maps them to the score."""
        self._check_input(x)
        return self.blocks(x).flatten(1)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Scores (B,); with ``return_features`` also the :meth:`features` (B, C_last * 16) of the same pass
        (use this under DDP, where only calls through the wrapper's ``forward`` are synchronised)."""
        self._check_input(x)
        h = self.blocks(x)
        scores = self.head(h).flatten()
        return (scores, h.flatten(1)) if return_features else scores


# --------------------------------------------------------------------------------------------- factories

GENERATOR_TYPES = ("dcgan", "conv_decoder", "progressive_decoder")

_DCGAN_GENERATOR_KEYS = {
    "z_dim", "g_channels", "image_size", "out_channels", "self_attention_resolutions", "min_channels", "init_weights",
}  # fmt: skip
_CRITIC_KEYS = {
    "d_channels", "image_size", "in_channels", "spectral_norm", "self_attention_resolutions", "max_channels",
    "norm", "init_weights",
}  # fmt: skip

class DecoderGenerator(nn.Module):
    """Give a ConvDecoder or ProgressiveDecoder the generator interface of :class:`WGANGenerator`
    (``z_dim``, ``image_size``, ``sample_latent``, ``forward(z)``).

    A ConvDecoder already maps ``z`` (B, latent_dim) to an image and is called as is. A ProgressiveDecoder
    grows its own learnable latent; here ``z`` (B, latent_channels) is fed in its place through the
    decoder's blocks, output activation and crop/pad, and the decoder's ``latent`` parameter is frozen
    (unused; a trainable unused parameter would stall DDP's gradient reduction).

    Args:
        decoder: a 2D ConvDecoder or ProgressiveDecoder (its ``use_amp`` / gradient checkpointing, if any,
            are not used here: the trainer owns autocast).
        z_dim: latent length the decoder expects.
        image_size: output height and width.

    Shapes:
        input (B, z_dim) -> output (B, C, image_size, image_size).
    """

    def __init__(self, decoder: nn.Module, z_dim: int, image_size: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.z_dim = int(z_dim)
        self.image_size = int(image_size)
        self.learned_latent = isinstance(getattr(decoder, "latent", None), nn.Parameter)
        if self.learned_latent:
            decoder.latent.requires_grad_(False)

    def sample_latent(
        self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``z`` ~ N(0, I) of shape (batch_size, z_dim)."""
        device = device if device is not None else next(self.decoder.parameters()).device
        return torch.randn(batch_size, self.z_dim, device=device, generator=generator)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"DecoderGenerator expects z of shape (B, {self.z_dim}), got {tuple(z.shape)}.")
        if not self.learned_latent:
            return self.decoder(z)
        dec = self.decoder
        x = z.view(z.shape[0], self.z_dim, *([1] * dec.spatial_dims))
        for block in dec.blocks:  # the same stages as ProgressiveDecoder._decode, fed with z
            x = block(x)
        return dec.pad(dec.crop(dec.output_activation(x)))


# generator.type -> the decoder, its config, and its config's latent-size, output-size and activation keys
_DECODERS = {
    "conv_decoder": (ConvDecoder, ConvDecoderConfig, "latent_dim", "output_size", "final_activation"),
    "progressive_decoder": (ProgressiveDecoder, ProgressiveDecoderConfig, "latent_channels", "input_size",
                            "output_activation"),
}
_BACKBONE = "generator.backbone."  # where a WGAN config holds the decoder's keys


def _build_decoder_generator(gtype: str, cfg: Mapping[str, Any], image_size: int | None) -> DecoderGenerator:
    cls, config_cls, latent_key, size_key, act_key = _DECODERS[gtype]
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    if "z_dim" in kwargs:  # the WGAN config's name for the latent size
        z_dim = kwargs.pop("z_dim")
        if kwargs.setdefault(latent_key, z_dim) != z_dim:
            raise ConfigError(f"generator.z_dim={z_dim} and {_BACKBONE}{latent_key}={kwargs[latent_key]} disagree; "
                              f"remove {_BACKBONE}{latent_key}")
    if image_size is not None and kwargs.setdefault(size_key, image_size) != image_size:
        raise ConfigError(
            f"{_BACKBONE}{size_key}={kwargs[size_key]} disagrees with wgan_train.image_size={image_size}; "
            f"remove {_BACKBONE}{size_key}"
        )
    kwargs.setdefault(act_key, "tanh")  # GAN images are scaled to [-1, 1]
    if kwargs.get("spatial_dims", 2) != 2:
        raise ConfigError(f"{_BACKBONE}spatial_dims={kwargs['spatial_dims']}: the adversarial trainers are 2D; "
                          "use spatial_dims=2")
    decoder = cls.from_config(config_cls.from_dict(kwargs, prefix=_BACKBONE))
    size = getattr(decoder.config, size_key)
    sizes = {int(size)} if isinstance(size, int) else {int(v) for v in size}
    if len(sizes) != 1:
        raise ConfigError(f"{_BACKBONE}{size_key}={list(size)}: the adversarial trainers need square images")
    return DecoderGenerator(decoder, z_dim=getattr(decoder.config, latent_key), image_size=sizes.pop())


def _section_kwargs(cfg: Mapping[str, Any], keys: set[str], section: str, image_size: int | None) -> dict[str, Any]:
    """Copy the known keys of a config section, merging ``image_size`` given by the caller."""
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{section}: expected a dict (the '{section}' config section), got {type(cfg).__name__}.")
    unknown = sorted(set(cfg) - keys - {"type"})
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; accepted keys are {sorted(keys)}.")
    kwargs = dict(cfg)
    kwargs.pop("type", None)
    if image_size is not None:
        if "image_size" in kwargs and kwargs["image_size"] != image_size:
            raise ValueError(
                f"{section}.image_size={kwargs['image_size']!r} disagrees with wgan_train.image_size={image_size!r}; "
                "remove one of them."
            )
        kwargs["image_size"] = image_size
    if "self_attention_resolutions" in kwargs:
        kwargs["self_attention_resolutions"] = tuple(kwargs["self_attention_resolutions"] or ())
    return kwargs


def build_generator(cfg: Mapping[str, Any], image_size: int | None = None) -> nn.Module:
    """Build the generator named by ``cfg["type"]`` from the ``generator`` config section.

    Args:
        cfg: the ``generator`` section, e.g. ``{"type": "dcgan", "z_dim": 128, "g_channels": 512,
            "self_attention_resolutions": [32]}``. ``type`` defaults to ``"dcgan"``; the other keys are the
            :class:`WGANGenerator` arguments. For ``conv_decoder`` / ``progressive_decoder`` they are that
            decoder's config fields (``generator.backbone`` of a WGAN config, which errors name), plus ``z_dim``
            as another name for ``latent_dim`` / ``latent_channels``; ``output_size`` / ``input_size`` default to
            ``image_size`` and the final activation to ``"tanh"``; the decoder is wrapped in
            :class:`DecoderGenerator`.
        image_size: output size from ``wgan_train.image_size``; may instead be given as ``cfg["image_size"]``.

    Returns:
        the generator: a module with ``z_dim``, ``sample_latent(batch_size, device, generator)`` and
        ``forward(z) -> (B, 1, image_size, image_size)`` in [-1, 1].

    Raises:
        ValueError: unknown ``type`` or key, or invalid values; :class:`~medgen.config.ConfigError` (a ValueError)
            for a decoder's keys, named as in a WGAN config.
    """
    gtype = str(cfg.get("type", "dcgan")) if isinstance(cfg, Mapping) else "dcgan"
    if gtype == "dcgan":
        return WGANGenerator(**_section_kwargs(cfg, _DCGAN_GENERATOR_KEYS, "generator", image_size))
    if gtype in _DECODERS:
        return _build_decoder_generator(gtype, cfg, image_size)
    raise ValueError(f"generator.type={gtype!r} is not known; choose one of {list(GENERATOR_TYPES)}.")


def build_critic(cfg: Mapping[str, Any], image_size: int | None = None) -> WGANCritic:
    """Build a :class:`WGANCritic` from the ``critic`` config section.

    Args:
        cfg: the ``critic`` section, e.g. ``{"d_channels": 64, "spectral_norm": false}``.
        image_size: input size from ``wgan_train.image_size``; may instead be given as ``cfg["image_size"]``.

    Returns:
        the critic.

    Raises:
        ValueError: unknown key or invalid values.
    """
    return WGANCritic(**_section_kwargs(cfg, _CRITIC_KEYS, "critic", image_size))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> [0, 1], the range of real images, metrics and written files."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
