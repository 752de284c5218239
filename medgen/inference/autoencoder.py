"""Use a trained autoencoder: ``medgen reconstruct`` and ``medgen encode`` (also called by the VAE bundles).

Both read what the model was trained with from the checkpoint (architecture, ``patch_size``, intensity
window, ``patch_mode``), apply the training's deterministic preprocessing
(:func:`medgen.data.transforms.deterministic_transforms`: read, window to [0, 1], pad up to or resize to
``patch_size``) and take a file, a folder or a training config's validation split as input.

- **reconstruct**: ``decode(z_mu)`` through MONAI's :class:`~monai.inferers.SlidingWindowInferer` with
  windows of the training ``patch_size`` (Gaussian blending): images and volumes of any size run with
  memory bounded by the window batch on the device; the stitched output stays on the CPU. The result
  is brought back to the input's shape (padding cropped in ``crop`` mode, resized back in ``resize``
  mode) and written with the input's spacing, in the model's [0, 1] intensity space.
- **encode**: the latent mean ``z_mu`` (and with ``sample=True`` one draw ``z = z_mu + sigma * eps``) of
  the WHOLE preprocessed image in one forward pass, not in windows: stitched window latents would not
  be what the encoder produces for the image (the bottleneck attention sees the whole input). In
  ``crop`` mode an image whose size is not a multiple of the model's downsampling factor is first
  padded (zeros, both sides) to the next multiple; ``image_shape`` in the latent file records the size
  to crop the decoded image back to (:func:`decode_latents`). Memory grows with the image size, so very
  large volumes need a device that holds one whole forward pass. In ``resize`` mode every image is
  encoded at ``patch_size``. ``scale_factor.json`` holds ``1 / std`` of the written latents over the
  whole set, the factor latent diffusion multiplies latents by.

Outputs are named after the input's path relative to the input folder (or its file name), never after
header values; DICOM output goes through :func:`medgen.io.writer.write_image`, which writes no patient
or study attributes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import AutoencoderKL
from monai.transforms import CenterSpatialCrop, DivisiblePad, Resize
from monai.utils import convert_to_tensor
from tqdm import tqdm

from medgen.config import AutoencoderDef, ConfigError, VAEConfig, from_dict, load_config
from medgen.io.checkpoint import load_checkpoint, save_checkpoint
from medgen.io.files import atomic_path, write_text_atomic
from medgen.models.autoencoder import build_autoencoder, load_autoencoder

__all__ = [
    "InputItem",
    "ReconstructionAutoencoderKL",
    "reconstruction_network",
    "checkpoint_config",
    "load_model",
    "find_inputs",
    "sliding_window_inferer",
    "preprocess",
    "reconstruct_items",
    "encode_items",
    "decode_latents",
    "reconstruct",
    "encode",
]

FORMATS = {"nii": ".nii.gz", "png": ".png", "dcm": ".dcm"}
LATENT_FORMATS = ("pt", "npz")
SCALE_FACTOR_FILE = "scale_factor.json"
# Suffixes dropped from input names before the output suffix is added (others, e.g. UID-like names, are kept).
_INPUT_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


class ReconstructionAutoencoderKL(AutoencoderKL):
    """MONAI ``AutoencoderKL`` whose ``forward`` is the deterministic reconstruction ``decode(z_mu)``.

    MONAI's ``forward`` samples ``z`` (two calls differ) and returns ``(reconstruction, z_mu, z_sigma)``;
    this is the network inference runs and ``monai.bundle ckpt_export`` exports. Same modules and
    state-dict keys as ``AutoencoderKL``, so medgen checkpoints load unchanged.

    Input ``(B, C, *spatial)``, each spatial size a multiple of the downsampling factor; output the same shape.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.reconstruct(x)


def reconstruction_network(autoencoder_def: AutoencoderDef | dict) -> ReconstructionAutoencoderKL:
    """The architecture of ``autoencoder_def`` (built by :func:`medgen.models.autoencoder.build_autoencoder`,
    untrained, eval mode) as a :class:`ReconstructionAutoencoderKL`: the bundles' ``network_def``."""
    if not isinstance(autoencoder_def, AutoencoderDef):
        autoencoder_def = from_dict(AutoencoderDef, dict(autoencoder_def), prefix="autoencoder_def.")
    return build_autoencoder(autoencoder_def, cls=ReconstructionAutoencoderKL).eval()


# ------------------------------------------------------------------------------------------- model + config
def checkpoint_config(checkpoint: str | Path, config: str | Path | None = None) -> VAEConfig:
    """The training config stored in a medgen checkpoint, or ``config`` for a checkpoint without one.

    Args:
        checkpoint: a checkpoint written by the VAE trainer (``{"autoencoder", "config", ...}``) or a plain
            AutoencoderKL state dict.
        config: a VAE config JSON (architecture, ``patch_size``, preprocessing); used only when the checkpoint
            holds no config.

    Raises:
        ConfigError: no config in the checkpoint and none given, or the stored config is not a VAE config.
    """
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint, mmap=True)  # mmap: the small config without reading every tensor
    stored = ckpt.get("config") if isinstance(ckpt, dict) else None
    if isinstance(stored, dict):
        if "autoencoder_def" not in stored:
            raise ConfigError(
                f"{checkpoint} was not written by the VAE trainer (its config has no autoencoder_def; a WGAN or GAN "
                "checkpoint?); reconstruct and encode need an AutoencoderKL checkpoint"
            )
        return VAEConfig.from_dict(stored)
    if config is None:
        raise ConfigError(
            f"{checkpoint} holds no training config (a plain state dict?); pass --config with the VAE config it was "
            "trained with (autoencoder_def, autoencoder_train.patch_size, intensity_percentiles, patch_mode)"
        )
    return load_config(config)


def load_model(
    checkpoint: str | Path, config: str | Path | None = None, device: str | torch.device | None = None
) -> tuple[AutoencoderKL, VAEConfig]:
    """``(autoencoder in eval mode on device, training config)`` from a checkpoint (see :func:`checkpoint_config`)."""
    device = torch.device(device) if device is not None else default_device()
    cfg = checkpoint_config(checkpoint, config)
    model = load_autoencoder(checkpoint, cfg.autoencoder_def, map_location=device)
    return model, cfg


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sliding_window_inferer(
    cfg: VAEConfig, device: str | torch.device, sw_batch_size: int = 4, overlap: float = 0.25
) -> SlidingWindowInferer:
    """Windows of the training ``patch_size`` run on ``device``; the blended output is assembled on the CPU."""
    return SlidingWindowInferer(
        roi_size=tuple(cfg.autoencoder_train.patch_size), sw_batch_size=sw_batch_size, overlap=overlap,
        mode="gaussian", sw_device=torch.device(device), device=torch.device("cpu"),
    )


# ------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class InputItem:
    """One image to process: ``path`` (file or DICOM series folder) and ``name``, the output path stem
    relative to the output folder (from the input's relative path, never from header values)."""

    path: Path
    name: str


def _stem(relative: str) -> str:
    lower = relative.lower()
    for suffix in _INPUT_SUFFIXES:
        if lower.endswith(suffix) and len(relative) > len(suffix):
            return relative[: -len(suffix)]
    return relative


def _named(paths: Sequence[Path], base: Path) -> list[InputItem]:
    from medgen.io.discovery import relative_name

    rels = []
    for p in paths:
        rel = relative_name(p, base)
        rels.append(p.name if rel in ("", ".") or rel.startswith("..") else rel)
    stems = [_stem(r) for r in rels]
    # a.png and a.dcm side by side would both become a.nii.gz: those keep their full name
    clash = {s for s in stems if stems.count(s) > 1}
    return [InputItem(p, r if s in clash else s) for p, r, s in zip(paths, rels, stems)]


def find_inputs(source: str | Path) -> list[InputItem]:
    """The images named by ``source`` (:func:`medgen.io.discovery.data_source`, as ``check-data`` and training
    read it): an image file, a DICOM series folder, a data folder (its edente/ dente/ images, or every image
    under it), or a training config JSON, whose validation split is used.

    Returns:
        items sorted by path; names are relative to the folder (or the config's ``data_base_dir``).
    """
    from medgen.io.discovery import data_source

    src = data_source(source)
    items = src.val if src.config is not None else src.train
    if src.config is not None and not items:
        raise ConfigError(f"{source}: its validation split is empty (train_split={src.config.train_split}, val_dir={src.config.val_dir})")
    return _named(sorted(Path(it["image"]) for it in items), src.base)


# ------------------------------------------------------------------------------------------- preprocessing
def preprocess(cfg: VAEConfig, item: InputItem | str | Path, transforms: Sequence | None = None):
    """Training's deterministic preprocessing of one image.

    Args:
        cfg: the training config (window percentiles, ``patch_mode``, ``patch_size``).
        item: the image.
        transforms: ``deterministic_transforms(cfg, patch_size)`` when already built (saves rebuilding per image).

    Returns:
        ``(image, image_shape, spacing)``: float32 tensor ``(1, *spatial)`` in [0, 1] as the model saw it
        in training (padded up to or resized to ``patch_size``), the spatial shape as read, and the spacing.
    """
    from medgen.data.transforms import LoadDentalImaged, deterministic_transforms

    path = item.path if isinstance(item, InputItem) else Path(item)
    chain = transforms if transforms is not None else deterministic_transforms(cfg, cfg.autoencoder_train.patch_size)
    data: dict[str, Any] = {"image": str(path)}
    shape = None
    for t in chain:
        data = t(data)
        if isinstance(t, LoadDentalImaged):
            shape = tuple(data["image"].shape[1:])
            if len(shape) != cfg.spatial_dims:
                raise ConfigError(
                    f"{path} is a {len(shape)}D image but the checkpoint's model is {cfg.spatial_dims}D "
                    f"(spatial_dims={cfg.spatial_dims}); use a {cfg.spatial_dims}D model for it"
                )
    spacing = tuple(float(s) for s in data["image_spacing"])
    return _plain(data["image"]).float(), shape, spacing


def _to_image_shape(y: torch.Tensor, image_shape: Sequence[int], patch_mode: str) -> torch.Tensor:
    """Undo the preprocessing's change of size: (C, *model_shape) -> (C, *image_shape)."""
    if tuple(y.shape[1:]) == tuple(image_shape):
        return y
    if patch_mode == "resize":
        mode = "bilinear" if len(image_shape) == 2 else "trilinear"
        return _plain(Resize(spatial_size=tuple(image_shape), mode=mode)(y))
    # every pad was symmetric and on each axis at most one pad was non-zero, so a centre crop inverts it
    return _plain(CenterSpatialCrop(roi_size=tuple(image_shape))(y))


def _plain(t) -> torch.Tensor:
    """A plain tensor: MONAI transforms may return MetaTensors, which weights_only loading rejects."""
    return convert_to_tensor(t, track_meta=False)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------------------------------- reconstruct
def _write(y: torch.Tensor, item: InputItem, output_dir: Path, fmt: str, spacing: Sequence[float]) -> Path:
    from medgen.io.reader import image_kind
    from medgen.io.writer import write_image

    out = output_dir / f"{item.name}{FORMATS[fmt]}"
    array = y.detach().cpu().float().numpy()
    if fmt == "nii":
        return write_image(array, out, spacing=spacing)
    if fmt == "png":
        return write_image(array, out, value_range=(0.0, 1.0), bit_depth=16)
    # Geometry attributes (allow-list) only come from the source DICOM; write_image copies nothing identifying.
    reference = item.path if image_kind(item.path) == "dicom" else None
    return write_image(array, out, spacing=spacing, reference=reference, value_range=(0.0, 1.0))


def reconstruct_items(
    model: AutoencoderKL,
    cfg: VAEConfig,
    items: Sequence[InputItem],
    output_dir: str | Path,
    fmt: str = "nii",
    inferer: SlidingWindowInferer | None = None,
    progress: bool = True,
) -> list[Path]:
    """Reconstruct each item with sliding windows and write it in the input's shape and spacing.

    Args:
        model: the trained autoencoder (its ``reconstruct`` is called per window batch).
        cfg: its training config (preprocessing and ``patch_size``).
        items: from :func:`find_inputs`.
        output_dir: written as ``output_dir/<item.name>.<nii.gz|png|dcm>``.
        fmt: ``"nii"`` (float32, spacing kept), ``"png"`` (2D only, 16-bit, [0, 1] -> 0..65535) or ``"dcm"``
            (Secondary Capture without patient data, 16-bit with a rescale to [0, 1]).
        inferer: default :func:`sliding_window_inferer` on the model's device.

    Returns:
        the files written.
    """
    from medgen.data.transforms import deterministic_transforms

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt} is not one of {', '.join(FORMATS)}")
    if fmt == "png" and cfg.spatial_dims == 3:
        raise ConfigError("--format png holds 2D images only; use --format nii or dcm for volumes")
    output_dir = Path(output_dir)
    inferer = inferer or sliding_window_inferer(cfg, _device_of(model))
    chain = deterministic_transforms(cfg, cfg.autoencoder_train.patch_size)
    model.eval()
    written = []
    for item in tqdm(items, desc="reconstruct", unit="image", disable=not progress, dynamic_ncols=True):
        x, image_shape, spacing = preprocess(cfg, item, chain)
        with torch.no_grad():
            y = inferer(x[None], model.reconstruct)[0]
        y = _to_image_shape(_plain(y).float(), image_shape, cfg.patch_mode).clamp(0.0, 1.0)
        written.append(_write(y, item, output_dir, fmt, spacing))
    return written


# ------------------------------------------------------------------------------------------- encode
class _RunningMoments:
    """Mean and variance over many tensors of different sizes (Chan et al.'s pairwise merge, float64)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, t: torch.Tensor) -> None:
        t = t.detach().double().flatten()
        n, mean = t.numel(), t.mean().item()
        m2 = (t - mean).pow(2).sum().item()
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    @property
    def std(self) -> float:  # unbiased, as torch.std
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else float("nan")


def _save_latent(record: dict, path: Path, latent_format: str) -> Path:
    if latent_format == "pt":
        return save_checkpoint(record, path)  # atomic; loads with weights_only=True
    arrays = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in record.items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, **arrays)
    return path


def encode_items(
    model: AutoencoderKL,
    cfg: VAEConfig,
    items: Sequence[InputItem],
    output_dir: str | Path,
    sample: bool = False,
    latent_format: str = "pt",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write each item's latents and ``scale_factor.json``.

    Each latent file ``output_dir/<item.name>.<pt|npz>`` holds ``z_mu`` ``(latent_channels, *latent_spatial)``
    (float32), ``z`` (one sample, when ``sample``), ``image_shape`` (the spatial shape as read),
    ``model_shape`` (the shape that was encoded, after padding or resizing), ``spacing``, ``patch_mode``
    and ``downsample_factor``. See the module docstring for how images larger than the patch are encoded.

    Args:
        model, cfg: the trained autoencoder and its training config.
        items: from :func:`find_inputs`.
        sample: also draw ``z = z_mu + z_sigma * eps``; the scale factor is then computed from ``z``.
        latent_format: ``"pt"`` (torch, ``weights_only`` loadable) or ``"npz"``.
        seed: seed of the draws of ``z``.

    Returns:
        the content of ``scale_factor.json``: ``scale_factor`` (1 / std), ``std``, ``mean``, ``latent``
        (``"z"`` or ``"z_mu"``), ``num_images``, ``num_values``, ``latent_channels``, ``downsample_factor``.
    """
    from medgen.data.transforms import deterministic_transforms

    if latent_format not in LATENT_FORMATS:
        raise ConfigError(f"--latent-format {latent_format} is not one of {', '.join(LATENT_FORMATS)}")
    output_dir = Path(output_dir)
    device = _device_of(model)
    factor = cfg.autoencoder_def.downsample_factor
    chain = deterministic_transforms(cfg, cfg.autoencoder_train.patch_size)
    # pad to a multiple of the downsampling factor so the whole image encodes (crop mode keeps full resolution)
    pad = DivisiblePad(k=factor)
    generator = torch.Generator(device=device).manual_seed(seed)
    moments = _RunningMoments()
    model.eval()
    for item in tqdm(items, desc="encode", unit="image", disable=not progress, dynamic_ncols=True):
        x, image_shape, spacing = preprocess(cfg, item, chain)
        x = _plain(pad(x))
        with torch.no_grad():
            z_mu, z_sigma = model.encode(x[None].to(device))
        record: dict[str, Any] = {"z_mu": z_mu[0].float().cpu()}
        if sample:
            eps = torch.randn(z_mu.shape, generator=generator, device=device, dtype=z_mu.dtype)
            record["z"] = (z_mu + z_sigma * eps)[0].float().cpu()
        moments.add(record["z" if sample else "z_mu"])
        record.update(
            image_shape=list(image_shape), model_shape=list(x.shape[1:]), spacing=list(spacing),
            patch_mode=cfg.patch_mode, downsample_factor=factor,
        )
        _save_latent(record, output_dir / f"{item.name}.{latent_format}", latent_format)
    stats = {
        "scale_factor": 1.0 / moments.std if moments.std > 0 else float("nan"),
        "std": moments.std,
        "mean": moments.mean,
        "latent": "z" if sample else "z_mu",
        "num_images": len(items),
        "num_values": moments.n,
        "latent_channels": cfg.autoencoder_def.latent_channels,
        "downsample_factor": factor,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_dir / SCALE_FACTOR_FILE, json.dumps(stats, indent=2) + "\n")
    return stats


def decode_latents(model: AutoencoderKL, record: dict[str, Any], key: str = "z_mu") -> torch.Tensor:
    """Decode one latent record written by :func:`encode_items` back to the image's shape.

    Args:
        model: the autoencoder that encoded it.
        record: the loaded ``.pt`` dict (or ``dict(np.load(path.npz))``).
        key: ``"z_mu"`` or ``"z"``.

    Returns:
        float32 tensor ``(out_channels, *image_shape)`` in [0, 1], on the CPU.
    """
    z = torch.as_tensor(np.asarray(record[key]) if not isinstance(record[key], torch.Tensor) else record[key])
    with torch.no_grad():
        y = model.decode(z[None].to(_device_of(model)).float())[0].float().cpu()
    shape = [int(s) for s in np.asarray(record["image_shape"]).tolist()]
    return _to_image_shape(y, shape, str(np.asarray(record["patch_mode"]))).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------- entry points
def reconstruct(
    checkpoint: str | Path,
    input: str | Path,
    output_dir: str | Path,
    fmt: str = "nii",
    *,
    config: str | Path | None = None,
    device: str | torch.device | None = None,
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    progress: bool = True,
) -> list[Path]:
    """Load the checkpoint, find the inputs, :func:`reconstruct_items`. Returns the files written."""
    model, cfg = load_model(checkpoint, config, device)
    items = find_inputs(input)
    inferer = sliding_window_inferer(cfg, _device_of(model), sw_batch_size, overlap)
    return reconstruct_items(model, cfg, items, output_dir, fmt, inferer, progress)


def encode(
    checkpoint: str | Path,
    input: str | Path,
    output_dir: str | Path,
    *,
    sample: bool = False,
    latent_format: str = "pt",
    config: str | Path | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the checkpoint, find the inputs, :func:`encode_items`. Returns the scale-factor statistics."""
    model, cfg = load_model(checkpoint, config, device)
    return encode_items(model, cfg, find_inputs(input), output_dir, sample, latent_format, seed, progress)
