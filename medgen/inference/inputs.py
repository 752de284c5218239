"""What the autoencoder commands work on, and what their outputs are called.

- :func:`find_inputs`: the images of a file, a DICOM series folder, a data folder or a training config's
  validation split, each an :class:`InputItem` named after its path relative to the input folder (or its
  file name), never after header values.
- :func:`find_latents`: the latent files of one file or a folder (``medgen decode``'s input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medgen.config import ConfigError
from medgen.errors import MissingInputError
from medgen.io.discovery import data_source, relative_name

__all__ = ["InputItem", "find_inputs", "find_latents"]

# Suffixes dropped from input names before the output suffix is added (others, e.g. UID-like names, are kept).
_INPUT_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


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
    src = data_source(source)
    items = src.val if src.config is not None else src.train
    if src.config is not None and not items:
        raise ConfigError(f"{source}: its validation split is empty (train_split={src.config.train_split}, val_dir={src.config.val_dir})")
    return _named(sorted(Path(it["image"]) for it in items), src.base)


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
