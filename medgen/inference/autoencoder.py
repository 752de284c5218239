"""The autoencoder commands: ``medgen reconstruct``, ``encode`` and ``decode`` (also called by the VAE bundles).

Each reads what the model was trained with from the checkpoint (:func:`medgen.models.autoencoder.load_model`:
architecture, ``patch_size``, intensity window, ``patch_mode``), applies the training's deterministic
preprocessing (:func:`medgen.data.whole.model_input`: read, window to [0, 1], pad up to or resize to
``patch_size``) and takes a file, a folder or a training config's validation split as input
(:func:`medgen.inference.inputs.find_inputs`).

All three run through :mod:`medgen.models.tiled`: overlapping tiles that advance through the network
together, normalised with the whole image's GroupNorm statistics and stitched with a cross-fade, so whole
panoramic radiographs and CBCT volumes run in bounded memory and come out as one image without seams.
Tiles default to the training patch (shrunk when one tile of it would need more than half the device's free
memory, :func:`medgen.models.tiled.tiling_for`) and overlap by a quarter of the tile (``--tile-size``,
``--overlap``).

- **reconstruct**: ``decode(z_mu)`` of the whole image, brought back to the input's shape (padding cropped
  in ``crop`` mode, resized back in ``resize`` mode) and written with the input's spacing, in the model's
  [0, 1] intensity space. ``report=True`` adds each output's seam ratio (:func:`medgen.metrics.seams.seam_ratio`)
  in ``reconstruct_report.json``.
- **encode**: one latent file per image (:mod:`medgen.data.latents`, the format latent diffusion caches too):
  the latent mean ``z_mu`` (and with ``sample=True`` one draw ``z = z_mu + sigma * eps``) of the whole
  preprocessed image. In ``crop`` mode an image whose size is not a multiple of the model's downsampling
  factor is first padded (zeros, both sides) to the next multiple; ``image_shape`` in the latent file
  records the size to crop the decoded image back to. In ``resize`` mode every image is encoded at
  ``patch_size``. ``scale_factor.json`` holds ``1 / std`` of the written latents over the whole set, the
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
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.networks.nets import AutoencoderKL
from tqdm import tqdm

from medgen.config import ConfigError, VAEConfig
from medgen.data.latents import LATENT_FORMATS, RunningMoments, encode_image, load_latent, save_latent
from medgen.data.transforms import deterministic_transforms
from medgen.data.whole import model_input, to_image_shape
from medgen.errors import out_of_memory_as
from medgen.inference.inputs import InputItem, find_inputs, find_latents
from medgen.io.files import write_text_atomic
from medgen.io.writer import format_suffix
from medgen.metrics.seams import seam_ratio
from medgen.models.autoencoder import load_model
from medgen.models.tiled import Tiling, downsample_factor, output_borders, tiled_decode, tiled_encode, tiling_for

__all__ = [
    "Reconstruction",
    "reconstruct_item",
    "reconstruct_items",
    "encode_items",
    "decode_items",
    "decode_latents",
    "reconstruct",
    "encode",
    "decode",
]

SCALE_FACTOR_FILE = "scale_factor.json"
REPORT_FILE = "reconstruct_report.json"


def _tiles_fit(what: str, shape: Sequence[int], tiling: Tiling):
    """Running out of memory inside it raises :class:`medgen.errors.OutOfMemoryError` naming ``--tile-size``."""
    tile = "x".join(map(str, tiling.tile))
    return out_of_memory_as(
        f"{what} ({'x'.join(map(str, shape))}) did not fit with tiles of {tile} pixels: lower --tile-size "
        f"(each tile's work needs device memory) or run on a machine with more memory (the tiles of the whole "
        f"image wait in host memory)")


def _guarded_encoder(model: AutoencoderKL, what: str):
    """:func:`tiled_encode` of ``model`` as :func:`medgen.data.latents.encode_image` calls it, running out of
    memory reported as ``what`` did not fit."""
    def encoder(x: torch.Tensor, tiling: Tiling) -> tuple[torch.Tensor, torch.Tensor]:
        with _tiles_fit(what, x.shape[2:], tiling):
            return tiled_encode(model, x, tiling)

    return encoder


# ------------------------------------------------------------------------------------------- reconstruct
def _check_format(fmt: str, cfg: VAEConfig) -> None:
    format_suffix(fmt)
    if fmt == "png" and cfg.spatial_dims == 3:
        raise ConfigError("--format png holds 2D images only; use --format nii or dcm for volumes")


def _write(y: torch.Tensor, item: InputItem, output_dir: Path, fmt: str, spacing: Sequence[float]) -> Path:
    from medgen.io.discovery import image_kind
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


class Reconstruction(NamedTuple):
    """One whole image through the tiled path, both in the input's shape and the model's [0, 1] intensities."""

    input: torch.Tensor  # (C, *image_shape), the preprocessed input
    output: torch.Tensor  # (C, *image_shape), decode(z_mu), clamped to [0, 1]
    seam_ratio: float  # of the stitched output at its tile borders, over the input's (nan: a single tile)
    model_shape: tuple[int, ...]  # the shape the model saw (padded or resized)
    spacing: Sequence[float]


def reconstruct_item(model: AutoencoderKL, cfg: VAEConfig, item: Any, tiling: Tiling, transforms: Sequence | None = None) -> Reconstruction:
    """``decode(z_mu)`` of one whole ``item`` (a path or :class:`InputItem`) in tiles, as ``medgen reconstruct``
    writes it; ``transforms``: the deterministic chain (built from ``cfg`` when None). The tensors returned are
    on the CPU."""
    chain = transforms if transforms is not None else deterministic_transforms(cfg, cfg.autoencoder_train.patch_size)
    x, image_shape, spacing = model_input(cfg, item, chain)
    name = getattr(item, "name", str(item))
    with _tiles_fit(f"reconstructing {name}", x.shape[2:], tiling):
        z_mu, _ = tiled_encode(model, x, tiling)
        y = tiled_decode(model, z_mu, tiling)[0]
    seams = seam_ratio(y.float(), output_borders(x.shape[2:], tiling, cfg.autoencoder_def.downsample_factor), x[0].to(y.device, torch.float32))
    back = [to_image_shape(t.cpu(), image_shape, cfg.patch_mode) for t in (x[0], y.float())]
    return Reconstruction(back[0], back[1].clamp(0.0, 1.0), seams, tuple(x.shape[2:]), spacing)


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
    _check_format(fmt, cfg)
    output_dir = Path(output_dir)
    tiling = tiling or tiling_for(cfg)
    chain = deterministic_transforms(cfg, cfg.autoencoder_train.patch_size)
    model.eval()
    written, seams = [], {}
    for item in tqdm(items, desc="reconstruct", unit="image", disable=not progress, dynamic_ncols=True):
        rec = reconstruct_item(model, cfg, item, tiling, chain)
        if report:
            seams[item.name] = {"seam_ratio": rec.seam_ratio, "image_shape": list(rec.output.shape[1:]),
                                "model_shape": list(rec.model_shape)}
        written.append(_write(rec.output, item, output_dir, fmt, rec.spacing))
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

    Each latent file ``output_dir/<item.name>.<pt|npz>`` is :func:`medgen.data.latents.encode_image`'s record:
    ``z_mu`` ``(latent_channels, *latent_spatial)`` (float32), ``z`` (one sample, when ``sample``),
    ``image_shape``, ``model_shape``, ``spacing``, ``patch_mode``, ``downsample_factor`` and the ``tile_size``
    and ``overlap`` it was encoded with.

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
    if latent_format not in LATENT_FORMATS:
        raise ConfigError(f"--latent-format {latent_format} is not one of {', '.join(LATENT_FORMATS)}")
    output_dir = Path(output_dir)
    tiling = tiling or tiling_for(cfg)
    factor = cfg.autoencoder_def.downsample_factor
    chain = deterministic_transforms(cfg, cfg.autoencoder_train.patch_size)
    generator = torch.Generator().manual_seed(seed) if sample else None
    moments = RunningMoments()
    model.eval()
    for item in tqdm(items, desc="encode", unit="image", disable=not progress, dynamic_ncols=True):
        record = encode_image(cfg, item, _guarded_encoder(model, f"encoding {item.name}"), tiling, chain, generator)
        moments.add(record["z" if sample else "z_mu"])
        save_latent(record, output_dir / f"{item.name}.{latent_format}")
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
            else Tiling.of([s * f for s in z.shape[1:]], 0, z.ndim - 1, f)  # a record without its tiling: one tile
    y = tiled_decode(model, z[None], tiling)[0].cpu()
    shape = [int(s) for s in np.asarray(record["image_shape"]).tolist()]
    return to_image_shape(y, shape, str(np.asarray(record["patch_mode"]))).clamp(0.0, 1.0)


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
        record = load_latent(path, required=("z_mu", "image_shape"))
        latent = record[key] if key in record else record["z_mu"]
        if np.ndim(latent) - 1 != cfg.spatial_dims or np.shape(latent)[0] != cfg.autoencoder_def.latent_channels:
            raise ConfigError(f"{path} holds a {np.ndim(latent) - 1}D latent of {np.shape(latent)[0]} channels but the "
                              f"checkpoint's autoencoder has {cfg.spatial_dims}D latents of "
                              f"{cfg.autoencoder_def.latent_channels} channels; decode with the autoencoder that encoded it")
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
