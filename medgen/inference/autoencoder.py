"""Use a trained autoencoder: ``medgen reconstruct`` and ``medgen encode`` (also called by the VAE bundles).

Both read what the model was trained with from the checkpoint (architecture, ``patch_size``, intensity
window, ``patch_mode``), apply the training's deterministic preprocessing
(:func:`medgen.data.transforms.deterministic_transforms`: read, window to [0, 1], pad up to or resize to
``patch_size``) and take a file, a folder or a training config's validation split as input.

All three run through :mod:`medgen.models.tiled`: overlapping tiles that advance through the network
together, normalised with the whole image's GroupNorm statistics and stitched with a cross-fade, so whole
panoramic radiographs and CBCT volumes run in bounded memory and come out as one image without seams.
Tile size and overlap default to twice the training patch and a quarter of the tile (``--tile-size``,
``--overlap``).

- **reconstruct**: ``decode(z_mu)`` of the whole image, brought back to the input's shape (padding cropped
  in ``crop`` mode, resized back in ``resize`` mode) and written with the input's spacing, in the model's
  [0, 1] intensity space. ``report=True`` adds each output's seam ratio (:func:`medgen.models.tiled.seam_ratio`)
  in ``reconstruct_report.json``.
- **encode**: the latent mean ``z_mu`` (and with ``sample=True`` one draw ``z = z_mu + sigma * eps``) of the
  whole preprocessed image. In ``crop`` mode an image whose size is not a multiple of the model's
  downsampling factor is first padded (zeros, both sides) to the next multiple; ``image_shape`` in the
  latent file records the size to crop the decoded image back to. In ``resize`` mode every image is encoded
  at ``patch_size``. ``scale_factor.json`` holds ``1 / std`` of the written latents over the whole set, the
  factor latent diffusion multiplies latents by.
- **decode**: latent files back to images, the reverse of ``encode``; with the same tiling, ``decode`` of
  ``encode``'s ``z_mu`` is ``reconstruct``'s output.

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
from monai.networks.nets import AutoencoderKL
from tqdm import tqdm

from medgen.config import AutoencoderDef, ConfigError, VAEConfig, from_dict, load_config
from medgen.errors import MissingInputError, out_of_memory_as
from medgen.io.checkpoint import load_checkpoint, save_checkpoint
from medgen.io.files import atomic_path, write_text_atomic
from medgen.io.writer import format_suffix
from medgen.data.whole import model_input, preprocess, to_image_shape as _to_image_shape
from medgen.models.autoencoder import build_autoencoder, load_autoencoder
from medgen.models.device import default_device
from medgen.models.tiled import Tiling, downsample_factor, tiling_for, output_borders, seam_ratio, tiled_decode, tiled_encode

__all__ = [
    "InputItem",
    "ReconstructionAutoencoderKL",
    "reconstruction_network",
    "checkpoint_config",
    "load_model",
    "find_inputs",
    "find_latents",
    "tiling_for",
    "preprocess",
    "reconstruct_items",
    "encode_items",
    "decode_items",
    "decode_latents",
    "reconstruct",
    "encode",
    "decode",
]

LATENT_FORMATS = ("pt", "npz")
SCALE_FACTOR_FILE = "scale_factor.json"
REPORT_FILE = "reconstruct_report.json"
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


def _tiles_fit(what: str, shape: Sequence[int], tiling: Tiling):
    """Running out of memory inside it raises :class:`OutOfMemoryError` naming ``--tile-size``."""
    tile = "x".join(map(str, tiling.tile))
    return out_of_memory_as(
        f"{what} ({'x'.join(map(str, shape))}) did not fit with tiles of {tile} pixels: lower --tile-size "
        f"(each tile's work needs device memory) or run on a machine with more memory (the tiles of the whole "
        f"image wait in host memory)")


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


# ------------------------------------------------------------------------------------------- reconstruct
def _check_format(fmt: str, cfg: VAEConfig) -> None:
    format_suffix(fmt)
    if fmt == "png" and cfg.spatial_dims == 3:
        raise ConfigError("--format png holds 2D images only; use --format nii or dcm for volumes")


def _write(y: torch.Tensor, item: InputItem, output_dir: Path, fmt: str, spacing: Sequence[float]) -> Path:
    from medgen.io.reader import image_kind
    from medgen.io.writer import write_image

    out = output_dir / f"{item.name}{format_suffix(fmt)}"
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
    tiling: Tiling | None = None,
    progress: bool = True,
    report: bool = False,
) -> list[Path]:
    """Reconstruct each whole item in tiles and write it in the input's shape and spacing.

    Args:
        model: the trained autoencoder.
        cfg: its training config (preprocessing and ``patch_size``).
        items: from :func:`find_inputs`.
        output_dir: written as ``output_dir/<item.name>.<nii.gz|png|dcm>``.
        fmt: ``"nii"`` (float32, spacing kept), ``"png"`` (2D only, 16-bit, [0, 1] -> 0..65535) or ``"dcm"``
            (Secondary Capture without patient data, 16-bit with a rescale to [0, 1]).
        tiling: default :func:`tiling_for` ``(cfg)``.
        report: also write ``reconstruct_report.json``: each output's seam ratio and the tiling.

    Returns:
        the image files written.
    """
    from medgen.data.transforms import deterministic_transforms

    _check_format(fmt, cfg)
    output_dir = Path(output_dir)
    tiling = tiling or tiling_for(cfg)
    chain = deterministic_transforms(cfg, cfg.autoencoder_train.patch_size)
    factor = cfg.autoencoder_def.downsample_factor
    model.eval()
    written, seams = [], {}
    for item in tqdm(items, desc="reconstruct", unit="image", disable=not progress, dynamic_ncols=True):
        x, image_shape, spacing = model_input(cfg, item, chain)
        with _tiles_fit(f"reconstructing {item.name}", x.shape[2:], tiling):
            z_mu, _ = tiled_encode(model, x, tiling)
            y = tiled_decode(model, z_mu, tiling)[0]
        if report:
            seams[item.name] = {
                "seam_ratio": seam_ratio(y, output_borders(x.shape[2:], tiling, factor)),
                "image_shape": list(image_shape), "model_shape": list(x.shape[2:]),
            }
        y = _to_image_shape(y.cpu(), image_shape, cfg.patch_mode).clamp(0.0, 1.0)
        written.append(_write(y, item, output_dir, fmt, spacing))
    if report:
        ratios = [v["seam_ratio"] for v in seams.values() if math.isfinite(v["seam_ratio"])]
        summary = {
            "tile_size": list(tiling.tile), "overlap": list(tiling.overlap),
            "seam_ratio_mean": float(np.mean(ratios)) if ratios else None,
            "seam_ratio_max": max(ratios) if ratios else None,
            "images": seams,
        }
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output_dir / REPORT_FILE, json.dumps(summary, indent=2) + "\n")
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
    tiling: Tiling | None = None,
) -> dict[str, Any]:
    """Write each item's latents and ``scale_factor.json``.

    Each latent file ``output_dir/<item.name>.<pt|npz>`` holds ``z_mu`` ``(latent_channels, *latent_spatial)``
    (float32), ``z`` (one sample, when ``sample``), ``image_shape`` (the spatial shape as read),
    ``model_shape`` (the shape that was encoded, after padding or resizing), ``spacing``, ``patch_mode``,
    ``downsample_factor`` and the ``tile_size`` and ``overlap`` it was encoded with.

    Args:
        model, cfg: the trained autoencoder and its training config.
        items: from :func:`find_inputs`.
        sample: also draw ``z = z_mu + z_sigma * eps``; the scale factor is then computed from ``z``.
        latent_format: ``"pt"`` (torch, ``weights_only`` loadable) or ``"npz"``.
        seed: seed of the draws of ``z``.
        tiling: default :func:`tiling_for` ``(cfg)``.

    Returns:
        the content of ``scale_factor.json``: ``scale_factor`` (1 / std), ``std``, ``mean``, ``latent``
        (``"z"`` or ``"z_mu"``), ``num_images``, ``num_values``, ``latent_channels``, ``downsample_factor``.
    """
    from medgen.data.transforms import deterministic_transforms

    if latent_format not in LATENT_FORMATS:
        raise ConfigError(f"--latent-format {latent_format} is not one of {', '.join(LATENT_FORMATS)}")
    output_dir = Path(output_dir)
    tiling = tiling or tiling_for(cfg)
    factor = cfg.autoencoder_def.downsample_factor
    chain = deterministic_transforms(cfg, cfg.autoencoder_train.patch_size)
    generator = torch.Generator().manual_seed(seed)
    moments = _RunningMoments()
    model.eval()
    for item in tqdm(items, desc="encode", unit="image", disable=not progress, dynamic_ncols=True):
        x, image_shape, spacing = model_input(cfg, item, chain)
        with _tiles_fit(f"encoding {item.name}", x.shape[2:], tiling):
            z_mu, z_sigma = tiled_encode(model, x, tiling)
        record: dict[str, Any] = {"z_mu": z_mu[0].float().cpu()}
        if sample:
            eps = torch.randn(record["z_mu"].shape, generator=generator)
            record["z"] = record["z_mu"] + z_sigma[0].float().cpu() * eps
        moments.add(record["z" if sample else "z_mu"])
        record.update(
            image_shape=list(image_shape), model_shape=list(x.shape[2:]), spacing=list(spacing),
            patch_mode=cfg.patch_mode, downsample_factor=factor, tile_size=list(tiling.tile), overlap=list(tiling.overlap),
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


def load_latent(path: str | Path) -> dict[str, Any]:
    """A latent file written by :func:`encode_items` (``.pt`` or ``.npz``) as a dict."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    record = load_checkpoint(path)
    if not isinstance(record, dict) or "z_mu" not in record or "image_shape" not in record:
        raise ConfigError(f"{path} is not a latent file written by `medgen encode` (no z_mu / image_shape)")
    return record


def find_latents(source: str | Path) -> list[tuple[Path, str]]:
    """``(path, name)`` of the latent files named by ``source``: one ``.pt``/``.npz`` file or a folder of them
    (searched recursively, as ``encode`` writes them); ``name`` is the path relative to the folder, no suffix."""
    source = Path(source)
    if not source.exists():
        raise MissingInputError(f"--input {source} does not exist; give a latent file or the output folder of `medgen encode`")
    if source.is_file():
        return [(source, source.name.rsplit(".", 1)[0])]
    files = sorted(p for p in source.rglob("*") if p.suffix in (".pt", ".npz") and p.is_file())
    if not files:
        raise MissingInputError(f"{source} holds no .pt or .npz latent files; write them with `medgen encode`")
    return [(p, p.relative_to(source).as_posix().rsplit(".", 1)[0]) for p in files]


def decode_latents(
    model: AutoencoderKL, record: dict[str, Any], key: str = "z_mu", tiling: Tiling | None = None
) -> torch.Tensor:
    """Decode one latent record written by :func:`encode_items` back to the image's shape.

    Args:
        model: the autoencoder that encoded it.
        record: from :func:`load_latent`.
        key: ``"z_mu"`` or ``"z"``.
        tiling: image-pixel tiling (default: the record's ``tile_size`` and ``overlap``).

    Returns:
        float32 tensor ``(out_channels, *image_shape)`` in [0, 1], on the CPU.
    """
    if key not in record:
        raise ConfigError(f"the latent file holds no {key!r} (keys: {', '.join(sorted(record))}); use --latent z_mu"
                          + (" or encode with --sample" if key == "z" else ""))
    z = torch.as_tensor(np.asarray(record[key]) if not isinstance(record[key], torch.Tensor) else record[key]).float()
    if tiling is None:
        f = downsample_factor(model)
        tile = record.get("tile_size")
        tiling = Tiling.of(np.asarray(tile).tolist(), np.asarray(record["overlap"]).tolist(), z.ndim - 1, f) if tile is not None \
            else Tiling.of([s * f for s in z.shape[1:]], 0, z.ndim - 1, f)  # files of older versions: one tile
    y = tiled_decode(model, z[None], tiling)[0].cpu()
    shape = [int(s) for s in np.asarray(record["image_shape"]).tolist()]
    return _to_image_shape(y, shape, str(np.asarray(record["patch_mode"]))).clamp(0.0, 1.0)


def decode_items(
    model: AutoencoderKL,
    cfg: VAEConfig,
    source: str | Path,
    output_dir: str | Path,
    fmt: str = "nii",
    key: str = "z_mu",
    tiling: Tiling | None = None,
    progress: bool = True,
) -> list[Path]:
    """Decode the latent files of ``source`` (:func:`find_latents`) into ``output_dir/<name>.<fmt>``, in the
    encoded image's shape and spacing; with the same tiling as ``reconstruct``, the same images."""
    _check_format(fmt, cfg)
    tiling = tiling or tiling_for(cfg)
    written = []
    for path, name in tqdm(find_latents(source), desc="decode", unit="image", disable=not progress, dynamic_ncols=True):
        record = load_latent(path)
        latent = record[key] if key in record else record["z_mu"]
        with _tiles_fit(f"decoding {path.name}", [s * cfg.autoencoder_def.downsample_factor for s in np.shape(latent)[1:]], tiling):
            y = decode_latents(model, record, key, tiling)
        spacing = [float(v) for v in np.asarray(record["spacing"]).tolist()]
        written.append(_write(y, InputItem(path, name), Path(output_dir), fmt, spacing))
    return written


# ------------------------------------------------------------------------------------------- entry points
def reconstruct(
    checkpoint: str | Path,
    input: str | Path,
    output_dir: str | Path,
    fmt: str = "nii",
    *,
    config: str | Path | None = None,
    device: str | torch.device | None = None,
    tile_size: int | Sequence[int] | None = None,
    overlap: float | None = None,
    norm: str | None = None,
    report: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Load the checkpoint, find the inputs, :func:`reconstruct_items`. Returns the files written."""
    model, cfg = load_model(checkpoint, config, device)
    items = find_inputs(input)
    return reconstruct_items(model, cfg, items, output_dir, fmt, tiling_for(cfg, tile_size, overlap, norm, model), progress, report)


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
    tile_size: int | Sequence[int] | None = None,
    overlap: float | None = None,
    norm: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the checkpoint, find the inputs, :func:`encode_items`. Returns the scale-factor statistics."""
    model, cfg = load_model(checkpoint, config, device)
    return encode_items(model, cfg, find_inputs(input), output_dir, sample, latent_format, seed, progress,
                        tiling_for(cfg, tile_size, overlap, norm, model))


def decode(
    checkpoint: str | Path,
    input: str | Path,
    output_dir: str | Path,
    fmt: str = "nii",
    *,
    key: str = "z_mu",
    config: str | Path | None = None,
    device: str | torch.device | None = None,
    tile_size: int | Sequence[int] | None = None,
    overlap: float | None = None,
    norm: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Load the checkpoint, :func:`decode_items` of the latent file or folder ``input``. Returns the files written."""
    model, cfg = load_model(checkpoint, config, device)
    return decode_items(model, cfg, input, output_dir, fmt, key, tiling_for(cfg, tile_size, overlap, norm, model), progress)
