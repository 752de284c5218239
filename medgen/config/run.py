"""The keys every medgen trainer shares (paths, data, run settings): :class:`RunConfig`.

Each method's config (``VAEConfig``, ``WGANConfig``, ``LDMConfig``, ...) subclasses it and declares its
training ``section``; a subclass that declares one is a config kind :func:`medgen.config.load_config` can pick.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from medgen.config.core import ConfigError, from_dict

# The class folders of a data set, in the order of their class indices: jaws without teeth (edentulous, also
# partially) and with teeth.
CLASSES = ("edente", "dente")


def duration_seconds(text: str, key: str) -> float:
    """A positive duration written ``"HH:MM:SS"`` or ``"DD:HH:MM:SS"`` (as Lightning's ``max_time``), in seconds."""
    parts = str(text).split(":")
    if len(parts) in (3, 4) and all(p.isdigit() for p in parts):
        *days, hours, minutes, seconds = (int(p) for p in parts)
        total = (days[0] if days else 0) * 86400 + hours * 3600 + minutes * 60 + seconds
        if total > 0:
            return float(total)
    raise ConfigError(f'{key}={text!r} must be a positive duration "HH:MM:SS" or "DD:HH:MM:SS", e.g. "08:00:00", '
                      "or null for no limit")


@dataclass
class RunConfig:
    #: the method's training section (``autoencoder_train``, ...); a subclass naming one is a config kind
    section: ClassVar[str] = ""
    #: what the kind trains, in messages
    title: ClassVar[str] = ""
    #: top-level keys that mark a config file as this kind (besides ``section``)
    marker_keys: ClassVar[tuple[str, ...]] = ()
    #: every config kind, in the order :func:`medgen.config.load_config` tries them
    kinds: ClassVar[list[type["RunConfig"]]] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.section and cls not in RunConfig.kinds:
            RunConfig.kinds.append(cls)

    # --- paths ---
    data_base_dir: str = "data"  # folder holding edente/ and dente/
    run_dir: str = "runs/vae"  # checkpoints, TensorBoard logs, resolved config, reports
    resume_ckpt: bool = False  # resume from checkpoint_dir (or run_dir/checkpoints/last.pt when it is null)
    checkpoint_dir: str | None = None  # checkpoint file to resume from when resume_ckpt is true (older name of resume_from)
    resume_from: str | None = None  # checkpoint file to resume from (resumes even without resume_ckpt); null: last.pt
    # --- data ---
    data_source: Literal["edente", "dente", "both"] = "edente"  # which class folders to train on
    train_split: float = 0.9  # fraction of images for training; the rest validate (ignored when val_dir is set)
    val_dir: str | None = None  # separate validation folder (with edente/ dente/ or images directly)
    augment: bool = False  # random flips, small rotations, intensity jitter on training patches
    spatial_dims: Literal[2, 3] = 2  # 2: radiographs, 3: CBCT volumes
    patch_mode: Literal["crop", "resize"] = "crop"  # random crops of patch_size, or whole images resized to it
    intensity_percentiles: tuple[float, ...] = (0.5, 99.5)  # per-image window mapped to [0, 1] (clipped)
    cache: Literal["disk", "memory", "none"] = "disk"  # decoded images cached on disk (shared by ranks) or in RAM
    cache_dir: str | None = None  # disk cache location (default run_dir/cache)
    cache_in_place: bool = True  # uncompressed 2D DICOM: read patches from the file itself (false: copy into cache_dir)
    # random patches cut from each training image per epoch: large volumes (a CBCT, 512^3) hold many patches, and
    # one per epoch would make an epoch (its validation, its checkpoint) a single step (crop mode only)
    patches_per_image: int = 1
    # crop mode: redraw a training patch (up to 10 draws) until at least this share of it is foreground (windowed
    # value above 0.05), else keep the draw with the most; sparse volumes (a thresholded CT) are mostly empty
    # patches otherwise. 0: uniform crops
    patch_min_foreground: float = 0.0
    skip_bad_files: bool = False  # train on the usable files and list the others in run_dir, instead of stopping
    scan_workers: int = 2  # processes reading files in the pre-training data check (0: serial)
    # --- run ---
    seed: int = 42  # global seed; rank r uses seed + r for its own randomness; the split uses seed
    num_workers: int = 4  # DataLoader worker processes per rank
    amp: bool = False  # mixed precision: bf16 autocast on CPU and recent GPUs, fp16 + loss scaling on older GPUs
    compile: bool = False  # torch.compile the networks' forward passes (a one-off compile time; see benchmarks/README.md)
    # replay the networks' forward and backward passes from CUDA graphs: the host queues two graphs a step instead
    # of a thousand kernels, the same kernels and values as without (one GPU, grad_accum_steps=1; see README)
    cuda_graphs: bool = False
    checkpoint_interval: int = 1  # write run_dir/checkpoints/last.pt every N epochs (and at the end)
    log_interval: int = 10  # steps between scalar logs (losses are averaged over them)
    num_val_images: int = 4  # images in the TensorBoard validation grid
    max_nonfinite_steps: int = 20  # steps in a row with a non-finite loss or gradient that are skipped before the run stops
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # torch.distributed backend (auto: nccl on GPU, gloo on CPU)
    # wall-clock training budget "[DD:]HH:MM:SS" (null: none): the run stops at the step where it is spent, writes
    # last.pt after a final validation; a resumed run goes on with what is left of it
    max_time: str | None = None

    def validate(self) -> None:
        if not 0.0 < self.train_split < 1.0:
            raise ConfigError(f"train_split={self.train_split} must be between 0 and 1 (exclusive), e.g. 0.9")
        lo, hi = (self.intensity_percentiles + (None, None))[:2]
        if len(self.intensity_percentiles) != 2 or not 0 <= lo < hi <= 100:
            raise ConfigError(f"intensity_percentiles={list(self.intensity_percentiles)} must be [low, high] with 0 <= low < high <= 100")
        for name in ("num_workers", "scan_workers", "max_nonfinite_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be 0 or more")
        for name in ("checkpoint_interval", "log_interval", "num_val_images", "patches_per_image"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if self.patches_per_image > 1 and self.patch_mode != "crop":
            raise ConfigError(f"patches_per_image={self.patches_per_image} needs patch_mode=crop (resize mode gives one "
                              "whole resized image per item); set patches_per_image=1")
        if not 0.0 <= self.patch_min_foreground < 1.0:
            raise ConfigError(f"patch_min_foreground={self.patch_min_foreground} must be a share in [0, 1), e.g. 0.05 "
                              "(0: uniform crops)")
        if self.max_time is not None:
            duration_seconds(self.max_time, "max_time")

    @property
    def max_time_seconds(self) -> float | None:
        """``max_time`` in seconds (None: no budget)."""
        return None if self.max_time is None else duration_seconds(self.max_time, "max_time")

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASSES if self.data_source == "both" else (self.data_source,)

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.run_dir) / "checkpoints" / "last.pt"

    @classmethod
    def from_dict(cls, data: dict):
        """The config of ``data`` (plain JSON values), every key and rule checked."""
        cfg = from_dict(cls, data)
        cfg.validate()
        return cfg



__all__ = ["CLASSES", "RunConfig"]
