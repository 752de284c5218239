"""Feature network for FID/KID, loaded only from this machine (never downloaded).

It is named by a network from the weights registry (``medgen weights list``, e.g. ``radimagenet_resnet50``,
read from the weights directory with the preprocessing it was trained with), or by a local file of one of
two kinds:

- a TorchScript archive (``torch.jit.save``), e.g. an Inception or RadImageNet network exported once by the
  user; it needs no model code;
- a plain state dict (``torch.save(model.state_dict())``, loaded with ``weights_only=True``) together with
  the model it belongs to: an ``nn.Module`` instance, or a ``"package.module:factory"`` string naming a
  callable that builds it (so a JSON config can name it; no torchvision needed by medgen).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from medgen.io import weights
from medgen.io.checkpoint import without_prefix

__all__ = ["FeatureExtractor", "feature_network_problem"]


def _network_name(path: str | os.PathLike) -> str | None:
    """``path`` as the name of a registry feature network: it is not a file, and the registry knows it."""
    text = str(path)
    if Path(text).expanduser().is_file() or text not in weights.registry():
        return None
    return text


def _feature_names() -> str:
    return ", ".join(n.name for n in weights.registry().values() if n.feature_defaults is not None)


def feature_network_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` (a file, or a network name from the registry) cannot give FID/KID features on this
    machine, or None when it can; checks presence only, so every rank can call it before training starts."""
    name = _network_name(path)
    if name is not None:
        if weights.network(name).feature_defaults is None:
            return f"{name} is not a feature network; feature networks: {_feature_names()}"
        missing = weights.network(name).missing()
        return f"{name} is not in the weights directory {weights.weights_home()} (no {missing[0]}); " \
               f"{weights.how_to_get(name)}" if missing else None
    if not Path(path).expanduser().is_file():
        return (f"{path} is neither a file nor a feature network from `medgen weights list` ({_feature_names()}); "
                "medgen never downloads weights")
    return None


def _resolve_model(model: nn.Module | str | Callable[[], nn.Module]) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, str):
        module_name, sep, attr = model.partition(":")
        if not sep or not module_name or not attr:
            raise ValueError(f"FeatureExtractor: model name {model!r} must look like 'package.module:factory'.")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"FeatureExtractor: cannot import model factory {model!r}: {err}") from err
        model = factory
    if callable(model):
        built = model()
        if not isinstance(built, nn.Module):
            raise TypeError(f"FeatureExtractor: model factory returned {type(built).__name__}, not an nn.Module.")
        return built
    raise TypeError(
        f"FeatureExtractor: model must be an nn.Module, a callable or a 'module:factory' string, got {model!r}."
    )


def _load_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors differ by torch version; all mean "not a state dict we can read"
        raise ValueError(
            f"FeatureExtractor: {path} is neither a TorchScript archive nor a readable state dict: {err}"
        ) from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # common checkpoint layout {"state_dict": ..., "epoch": ...}
    if not isinstance(state, Mapping):
        raise ValueError(f"FeatureExtractor: {path} holds a {type(state).__name__}, not a state dict.")
    state = without_prefix(state)  # weights saved from a DataParallel/DDP wrapper carry a "module." prefix
    return state


def _load_file(path: Path, model: nn.Module | str | Callable[[], nn.Module] | None) -> nn.Module:
    """The network in a TorchScript file, or ``model`` with the state dict in ``path``."""
    if not path.is_file():
        raise FileNotFoundError(
            f"Feature network weights not found at '{path}'. FID/KID need a feature network saved locally "
            "(a TorchScript file from torch.jit.save, or a state dict plus the model that loads it) or a network "
            f"from `medgen weights list` ({_feature_names()}); medgen never downloads weights. Point the "
            "feature-network path in your config at it, or leave it empty to log only the weight-free measures "
            "(SSIM diversity, histogram distances)."
        )
    if model is None:
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # RuntimeError for non-TorchScript zips, others for garbage
            raise ValueError(
                f"FeatureExtractor: {path} is not a TorchScript archive ({err}). If it is a state dict, "
                "also name the model it belongs to (model='package.module:factory')."
            ) from err
    net = _resolve_model(model)
    net.load_state_dict(_load_state_dict(path))
    return net


class FeatureExtractor(nn.Module):
    """Turn image batches into (N, D) feature vectors for :func:`medgen.metrics.fid` / :func:`medgen.metrics.kid`.

    Images are optionally resized, their channel dimension repeated (grayscale -> RGB networks), mapped from
    ``input_range`` to [0, 1] and normalised with ``mean`` / ``std``, run through the network in eval mode
    without gradients, and spatial outputs are global-average pooled.

    Args:
        path: a feature network from the weights registry (e.g. ``"radimagenet_resnet50"``; its preprocessing is
            the default for ``in_channels``, ``mean`` and ``std``), or a local file with the network weights
            (TorchScript archive, or a state dict when ``model`` is given).
        model: for a state-dict file, the module (or a callable / ``"package.module:factory"`` building it).
        in_channels: channels the network expects; a 1-channel batch is repeated to this many (None: unchanged).
        input_size: resize images to this spatial size before the network (None: unchanged).
        input_range: intensity range of the incoming images, mapped to [0, 1] (e.g. (-1, 1) for Tanh outputs).
        mean: per-channel mean subtracted after mapping to [0, 1] (None: no normalisation).
        std: per-channel std divided after subtracting ``mean``.
        device: device the network runs on (default CPU).

    Raises:
        FileNotFoundError: ``path`` is neither a file nor a registry network.
        medgen.io.weights.WeightsError: the registry network is not in the weights directory.
        ValueError: the file cannot be read as TorchScript (and no ``model`` was given) or as a state dict.

    Shapes:
        input (B, C, *spatial) -> output (B, D) float32.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        model: nn.Module | str | Callable[[], nn.Module] | None = None,
        in_channels: int | None = None,
        input_size: int | Sequence[int] | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        name = _network_name(path)
        if name is not None:  # a registry network, built by its own loader from the weights directory
            problem = feature_network_problem(name)
            if problem:
                raise weights.WeightsError(f"FID/KID feature network {problem}")
            if model is not None:
                raise ValueError(f"FeatureExtractor: a model ({model!r}) goes with a state-dict file, not with the "
                                 f"registry network {name}; leave it out")
            defaults = weights.network(name).feature_defaults
            in_channels = defaults["in_channels"] if in_channels is None else in_channels
            if mean is None and std is None:
                mean, std = defaults["mean"], defaults["std"]
            net = weights.load_network(name)
        else:
            net = _load_file(Path(path).expanduser(), model)
        self.path = Path(name or path)
        self.net = net.to(device).eval()
        self.device = torch.device(device)
        self.in_channels = in_channels
        self.input_size = input_size
        self.input_range = (float(input_range[0]), float(input_range[1]))
        if (mean is None) != (std is None):
            raise ValueError("FeatureExtractor: give both mean and std, or neither.")
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """The feature network always stays in eval mode (BatchNorm/dropout must not change features)."""
        super().train(mode)
        self.net.eval()
        return self

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        param = next(self.net.parameters(), None)  # follows a later .to(device) of this module
        x = x.to(param.device if param is not None else self.device, torch.float32)
        low, high = self.input_range
        x = (x - low) / (high - low)
        if self.input_size is not None:
            mode = "bilinear" if x.dim() == 4 else "trilinear"
            x = F.interpolate(x, size=self.input_size, mode=mode, align_corners=False)
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            if x.shape[1] != 1:
                raise ValueError(
                    f"FeatureExtractor: network expects {self.in_channels} channels, images have {x.shape[1]}."
                )
            x = x.expand(-1, self.in_channels, *x.shape[2:])
        if self.mean is not None and self.std is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            x = (x - self.mean.to(x.device).view(shape)) / self.std.to(x.device).view(shape)
        return x

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(self._prepare(images))
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"FeatureExtractor: the network in {self.path} returned {type(out).__name__}; it must return one "
                "feature tensor (B, D) or (B, C, *spatial). Export a wrapper that returns the feature layer."
            )
        if out.dim() > 2:  # spatial feature maps -> global average pool
            out = out.flatten(2).mean(-1)
        return out.float().flatten(1)

    @torch.no_grad()
    def extract(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Features of a large image set, computed ``batch_size`` images at a time, returned on CPU (N, D)."""
        return torch.cat([self(images[i : i + batch_size]).cpu() for i in range(0, images.shape[0], batch_size)])
