"""The keys every medgen trainer shares (paths, data, run settings) and the one way to load a config.

:func:`load_config` reads a JSON file, applies ``--set`` overrides, validates, and resolves the config's
input paths (``data_base_dir``, ``val_dir``): a relative path is taken from the current folder, or, when
nothing is there, from the folder that holds the config file. Training, ``check-data``, reconstruct/encode
and the bundles all load configs through it, so a config means the same data everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medgen.config.core import ConfigError, apply_overrides, read_json

# Keys naming inputs that must already exist; resolved against the config's folder when not found here.
INPUT_PATH_KEYS = ("data_base_dir", "val_dir", "resume_from", "autoencoder_checkpoint")


@dataclass
class RunConfig:
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
    skip_bad_files: bool = False  # train on the usable files and list the others in run_dir, instead of stopping
    scan_workers: int = 2  # processes reading files in the pre-training data check (0: serial)
    # --- run ---
    seed: int = 42  # global seed; rank r uses seed + r for its own randomness; the split uses seed
    num_workers: int = 4  # DataLoader worker processes per rank
    amp: bool = False  # mixed precision: bf16 autocast on CPU and recent GPUs, fp16 + loss scaling on older GPUs
    checkpoint_interval: int = 1  # write run_dir/checkpoints/last.pt every N epochs (and at the end)
    log_interval: int = 10  # steps between scalar logs (losses are averaged over them)
    num_val_images: int = 4  # images in the TensorBoard validation grid
    max_nonfinite_steps: int = 20  # steps in a row with a non-finite loss or gradient that are skipped before the run stops
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # torch.distributed backend (auto: nccl on GPU, gloo on CPU)

    def validate(self) -> None:
        if not 0.0 < self.train_split < 1.0:
            raise ConfigError(f"train_split={self.train_split} must be between 0 and 1 (exclusive), e.g. 0.9")
        lo, hi = (self.intensity_percentiles + (None, None))[:2]
        if len(self.intensity_percentiles) != 2 or not 0 <= lo < hi <= 100:
            raise ConfigError(f"intensity_percentiles={list(self.intensity_percentiles)} must be [low, high] with 0 <= low < high <= 100")
        for name in ("num_workers", "scan_workers", "max_nonfinite_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be 0 or more")
        for name in ("checkpoint_interval", "log_interval", "num_val_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")

    @property
    def classes(self) -> tuple[str, ...]:
        return ("edente", "dente") if self.data_source == "both" else (self.data_source,)

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.run_dir) / "checkpoints" / "last.pt"



def resolve_input_path(value: str, config_file: str | Path | None) -> str:
    """``value`` as given when it exists (or is absolute, or there is no config file); otherwise the same
    relative path under the config file's folder when that exists."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or config_file is None:
        return str(path)
    beside = Path(config_file).parent / path
    return str(beside) if beside.exists() else str(path)


def load_config(path: str | Path | None, overrides: list[str] = (), cls=None):
    """Read a config file (or the defaults when ``path`` is None), apply ``--set`` overrides, validate.

    Args:
        path: the JSON file.
        overrides: ``key.path=VALUE`` strings (``--set``).
        cls: the config class (``VAEConfig``, ``WGANConfig``, ``LDMConfig``); None picks it from the file's
            sections (``wgan_train`` -> WGAN, ``ldm_train`` or ``diffusion_def`` -> LDM, otherwise VAE).

    Returns:
        the validated config, its input paths resolved (see the module docstring).
    """
    data = read_json(path) if path is not None else {}
    apply_overrides(data, list(overrides))
    if cls is None:
        from medgen.config.ldm import LDMConfig
        from medgen.config.vae import VAEConfig
        from medgen.config.wgan import WGANConfig

        if "wgan_train" in data:
            cls = WGANConfig
        elif "ldm_train" in data or "diffusion_def" in data:
            cls = LDMConfig
        else:
            cls = VAEConfig
    for key in INPUT_PATH_KEYS:
        if isinstance(data.get(key), str):
            data[key] = resolve_input_path(data[key], path)
    return cls.from_dict(data)



__all__ = ["INPUT_PATH_KEYS", "RunConfig", "load_config", "resolve_input_path"]
