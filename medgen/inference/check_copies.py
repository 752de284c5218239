"""``medgen check-copies``: is any generated image (nearly) a copy of a training image?

    medgen check-copies --samples samples/ --train ldm_config.json [--threshold D] [--output DIR]

Every sample and every training image is read and windowed to [0, 1] as training reads images, reduced to
a thumbnail and compared by ``1 - NCC`` (:mod:`medgen.metrics.copies` says why this distance). The threshold
is calibrated on the training images themselves unless ``--threshold`` is given; so is the distance beyond
which a sample looks like no training image at all (noise, an untrained model), which the check reports as
*unlike*: it cannot say whether such a sample copies anyone. Written to ``--output``: ``copy_check.json``
(every sample's nearest training image and distance, the calibration, the flagged and the unlike samples) and ``closest_pairs.png`` (the closest pairs side by side: sample left, training image right;
volumes as their middle axial slice). Images are named by their path relative to the folders given, never
by header values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medgen.data.transforms import read_windowed
from medgen.errors import InvalidValueError
from medgen.io.discovery import data_source, relative_name
from medgen.io.files import write_text_atomic
from medgen.metrics.copies import MARGIN, calibrate, nearest, thumbnail

__all__ = ["check_copies", "REPORT", "SHEET"]

REPORT, SHEET = "copy_check.json", "closest_pairs.png"
SHEET_TILE = 128  # pixels per image in the sheet


def _read(paths: list[Path], percentiles) -> list[torch.Tensor]:
    return [read_windowed(str(p), percentiles) for p in paths]


def _tile(image: torch.Tensor) -> torch.Tensor:
    """(C, *spatial) -> (SHEET_TILE, SHEET_TILE) for the sheet (a volume's middle axial slice)."""
    x = image[0]
    if x.ndim == 3:
        x = x[x.shape[0] // 2]
    return F.interpolate(x[None, None].float(), size=(SHEET_TILE, SHEET_TILE), mode="area")[0, 0]


def _sheet(pairs: list[tuple[torch.Tensor, torch.Tensor]], path: Path) -> Path:
    from medgen.io.writer import write_image

    gap = 4
    rows = [torch.cat([_tile(s), torch.ones(SHEET_TILE, gap), _tile(t)], dim=1) for s, t in pairs]
    sheet = torch.cat([torch.cat([r, torch.ones(gap, r.shape[1])]) for r in rows])[:-gap]
    return write_image(sheet[None].numpy(), path, value_range=(0.0, 1.0), bit_depth=8)


def check_copies(samples: str | Path, train: str | Path, output: str | Path | None = None, threshold: float | None = None,
                 percentile: float = 5.0, margin: float = MARGIN, pairs: int = 8) -> dict:
    """Nearest training image of every sample; writes the report and the sheet (see the module docstring).

    Args:
        samples: a folder (or file) of generated images.
        train: a training config JSON (its training split, read with its ``intensity_percentiles``) or a folder.
        output: where the report and sheet go (default: ``<samples>_copy_check`` beside the samples folder).
        threshold: flag samples closer than this; default ``margin x`` the ``percentile``-th percentile of the
            training images' distances to their nearest other training image (:func:`medgen.metrics.copies.calibrate`).
        pairs: closest pairs shown in the sheet.

    Returns:
        the report: ``threshold``, ``unlike_distance``, ``calibration``, ``samples`` (sorted by distance),
        ``flagged`` (copies), ``unlike`` (samples farther from every training image than training images are
        from each other: noise the check cannot judge), ``num_train``.
    """
    src, tr = data_source(samples), data_source(train)
    percentiles = tr.config.intensity_percentiles if tr.config is not None else (0.5, 99.5)
    train_paths = sorted(Path(it["image"]) for it in tr.train)
    sample_paths = sorted(Path(it["image"]) for it in src.train)
    if len(train_paths) < 2 and threshold is None:
        raise InvalidValueError(f"--train {train} holds {len(train_paths)} image; calibrating the threshold needs at least 2, "
                                "or give --threshold")
    train_images, sample_images = _read(train_paths, percentiles), _read(sample_paths, percentiles)
    dims = {name: images[0].ndim - 1 for name, images in (("--samples", sample_images), ("--train", train_images)) if images}
    if len(set(dims.values())) > 1:
        raise InvalidValueError(f"--samples {samples} holds {dims['--samples']}D images but --train {train} holds "
                                f"{dims['--train']}D ones; compare samples with training images of the same dimensionality")
    train_t = torch.stack([thumbnail(x) for x in train_images])
    dist, index = nearest(sample_images, train_t)
    calibration = calibrate(train_t, percentile, margin, train_images) if len(train_paths) >= 2 else {}
    limit = threshold if threshold is not None else calibration["threshold"]
    unlike = calibration.get("unlike", 2.0)
    rows = sorted(
        ({"sample": relative_name(sample_paths[i], src.base), "nearest_train": relative_name(train_paths[j], tr.base),
          "distance": float(d), "flagged": bool(d < limit), "unlike": bool(d > unlike)}
         for i, (d, j) in enumerate(zip(dist.tolist(), index.tolist()))),
        key=lambda r: r["distance"],
    )
    report = {"metric": "1 - NCC of thumbnails (closest shift, crop or mirror of the sample)", "threshold": limit,
              "threshold_given": threshold is not None, "unlike_distance": unlike, "calibration": calibration,
              "num_train": len(train_paths), "num_samples": len(sample_paths),
              "flagged": [r["sample"] for r in rows if r["flagged"]], "unlike": [r["sample"] for r in rows if r["unlike"]],
              "samples": rows}
    out = Path(output) if output is not None else Path(src.base).parent / f"{Path(src.base).name}_copy_check"
    write_text_atomic(out / REPORT, json.dumps(report, indent=2) + "\n")
    order = np.argsort(dist.numpy())[:pairs]
    _sheet([(sample_images[i], train_images[index[i]]) for i in order], out / SHEET)
    report["output"] = str(out)
    return report
