"""The transform chains (MONAI dict transforms), defined once for training, validation and the bundles.

Each chain is ``deterministic + random``: the deterministic part (read, intensity window, resize or pad)
is computed once per image; the random part (crop, augmentation) runs every epoch.

With the disk cache (:mod:`medgen.data.cache`) the deterministic part stops before the window is applied:
the cache holds :func:`decode`'s :class:`DecodedImage` (the decoded values at their own width, the window,
the spacing), and :func:`cached_train_transforms` / :func:`cached_val_transforms` cut the patch out of it
first and window and pad only the patch. They give the same patches as :func:`train_transforms` /
:func:`val_transforms` from the same random state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    CenterSpatialCrop,
    CenterSpatialCropd,
    Compose,
    EnsureTyped,
    MapTransform,
    RandAdjustContrastd,
    RandFlipd,
    RandRotated,
    RandScaleIntensityd,
    RandSpatialCropd,
    Resized,
    ScaleIntensityRange,
    SpatialPadd,
)

from medgen.config import RunConfig
from medgen.data.window import integer_values, one_thread, percentile_window
from medgen.io.image import Pixels
from medgen.io.reader import read_pixels

UNIT_RANGE = (0.0, 1.0)  # the window maps to this range (clipped)
# patch_min_foreground: a pixel above this windowed value is foreground (anatomy, not the black surround), and a
# training crop is drawn up to FOREGROUND_DRAWS times until enough of it is
FOREGROUND_LEVEL = 0.05
FOREGROUND_DRAWS = 10


class LoadDentalImaged(MapTransform):
    """Read each key's path with :func:`medgen.io.reader.read_image` (DICOM file or series, NIfTI, PNG).

    Output: a float32 tensor (C, *spatial) in presentation form; the spacing goes to ``{key}_spacing``.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from medgen.io.reader import read_image

        d = dict(data)
        for key in self.key_iterator(d):
            array, spacing = read_image(d[key])
            d[key] = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))
            d[f"{key}_spacing"] = torch.as_tensor(spacing, dtype=torch.float64)
        return d


class ScaleIntensityRangePercentilesNumpyd(MapTransform):
    """MONAI's ``ScaleIntensityRangePercentilesd`` (not channel-wise, not relative) with the percentiles of
    ``np.percentile``: map the image's ``lower``..``upper`` percentiles to ``b_min``..``b_max``, clipped if ``clip``.

    MONAI computes the percentiles with ``torch.quantile`` below 1M elements and with ``np.percentile`` above
    (pytorch#64947); ``torch.quantile`` sorts the whole image. Here they are ``np.percentile``'s (linear
    interpolation in float64, so the window ends differ from ``torch.quantile``'s float32 ones by float32
    rounding only), computed by :func:`medgen.data.window.percentile_window`: from value counts when the
    image holds whole numbers (stored DICOM values), which is many times faster than any partition or sort.
    The mapping itself is MONAI's ``ScaleIntensityRange``.

    Args:
        keys: keys of the images (tensors or arrays, any shape) to window.
        lower, upper: percentiles in [0, 100] mapped to ``b_min`` and ``b_max``.
        b_min, b_max: output range.
        clip: clip the output to ``[b_min, b_max]``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower: float,
        upper: float,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.lower, self.upper, self.b_min, self.b_max, self.clip = lower, upper, b_min, b_max, clip

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            values = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            a_min, a_max = percentile_window(Pixels(values), self.lower, self.upper)
            scale = ScaleIntensityRange(a_min, a_max, self.b_min, self.b_max, clip=self.clip, dtype=torch.float32)
            d[key] = scale(img)
        return d


def window_transforms(percentiles: Sequence[float], keys: str = "image") -> list:
    """Read, then window the ``percentiles`` to [0, 1] (clipped)."""
    lo, hi = percentiles
    return [LoadDentalImaged(keys), ScaleIntensityRangePercentilesNumpyd(keys, lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True)]


def read_windowed(path: str, percentiles: Sequence[float] = (0.5, 99.5)) -> torch.Tensor:
    """One image read and windowed to [0, 1] at its own size: a plain float32 tensor ``(C, *spatial)``."""
    data = {"image": str(path)}
    for t in window_transforms(percentiles):
        data = t(data)
    return torch.as_tensor(np.asarray(data["image"]), dtype=torch.float32)


def deterministic_transforms(cfg: RunConfig, patch_size: Sequence[int], keys: str = "image") -> list:
    """Read, window to [0, 1], then resize to ``patch_size`` or pad up to it (``patch_mode``)."""
    chain = window_transforms(cfg.intensity_percentiles, keys)
    if cfg.patch_mode == "resize":
        chain.append(Resized(keys, spatial_size=tuple(patch_size), mode="area"))
    else:
        chain.append(SpatialPadd(keys, spatial_size=tuple(patch_size)))
    chain.append(EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    return chain


def augment_transforms(cfg: RunConfig, patch_size: Sequence[int], keys: str = "image") -> list:
    """Radiograph-safe augmentation of a patch when ``augment`` is on (else none)."""
    if not cfg.augment:
        return []
    return [
        RandFlipd(keys, prob=0.5, spatial_axis=len(patch_size) - 1),  # left-right mirror of the jaw
        RandRotated(keys, range_x=0.1, prob=0.3, keep_size=True, padding_mode="zeros"),  # about 6 degrees
        RandScaleIntensityd(keys, factors=0.1, prob=0.3),
        RandAdjustContrastd(keys, gamma=(0.8, 1.25), prob=0.3),
    ]


def foreground_share(patch: torch.Tensor) -> float:
    """The share of a windowed patch's pixels above :data:`FOREGROUND_LEVEL`."""
    return float((torch.as_tensor(patch) > FOREGROUND_LEVEL).float().mean())


class RandForegroundCropd(RandSpatialCropd):
    """``RandSpatialCropd`` of ``roi_size`` that redraws the crop (up to :data:`FOREGROUND_DRAWS` draws) until at
    least ``min_foreground`` of the first key's patch is foreground (:func:`foreground_share`), keeping the draw
    with the most foreground when none reaches it. ``min_foreground=0``: one draw, exactly ``RandSpatialCropd``.

    Sparse images are why: a thresholded CT angiogram is about 96% zeros, and uniform crops of it teach the
    autoencoder mostly the empty background. Every draw comes from the transform's own random state, so the patch
    depends only on the item's seed, as a plain crop does. MONAI's ``RandCropByPosNegLabeld`` and
    ``RandWeightedCropd`` choose centres from a label or weight map of the whole image; this one needs only the
    patches, so the cached path (:class:`RandCropDecodedd`) still reads no more of a large volume than the draws.
    """

    def __init__(self, keys: KeysCollection, roi_size: Sequence[int], min_foreground: float = 0.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, roi_size=roi_size, random_size=False, allow_missing_keys=allow_missing_keys)
        self.min_foreground = min_foreground

    def cut(self, d: dict) -> dict:
        """One draw: the crop's position from the random state, every key cut there (``RandSpatialCropd``)."""
        return super().__call__(d, lazy=False)

    def __call__(self, data: Mapping[Hashable, object], lazy: bool | None = None) -> dict:
        d = dict(data)
        if self.min_foreground <= 0:
            return self.cut(d)
        best, best_share = None, -1.0
        for _ in range(FOREGROUND_DRAWS):
            out = self.cut(d)
            share = foreground_share(out[self.first_key(out)])
            if share > best_share:
                best, best_share = out, share
            if share >= self.min_foreground:
                break
        return best


def random_transforms(cfg: RunConfig, patch_size: Sequence[int], keys: str = "image") -> list:
    """Random crop to ``patch_size`` (redrawn towards foreground with ``patch_min_foreground``) and, when
    ``augment`` is on, radiograph-safe augmentation."""
    chain = []
    if cfg.patch_mode == "crop":
        chain.append(RandForegroundCropd(keys, tuple(patch_size), cfg.patch_min_foreground))
    return chain + augment_transforms(cfg, patch_size, keys) + [EnsureTyped(keys, dtype=torch.float32, track_meta=False)]


def train_transforms(cfg: RunConfig, patch_size: Sequence[int], keys: str = "image") -> Compose:
    return Compose(deterministic_transforms(cfg, patch_size, keys) + random_transforms(cfg, patch_size, keys))


def val_transforms(cfg: RunConfig, patch_size: Sequence[int], keys: str = "image") -> Compose:
    chain = deterministic_transforms(cfg, patch_size, keys)
    if cfg.patch_mode == "crop":
        chain.append(CenterSpatialCropd(keys, roi_size=tuple(patch_size)))
    return Compose(chain)


# ------------------------------------------------------------------------------------------ the cached path
@dataclass(frozen=True)
class DecodedImage:
    """One item as the disk cache holds it: the deterministic part of the chain, before the window is applied.

    Attributes:
        pixels: the decoded values at their own width, shape ``(*spatial)``, and their linear map to
            presentation values. Read from the cache, the values are a
            :class:`medgen.data.cache.ChunkedValues` over the memory-mapped entry, or a
            :class:`medgen.data.cache.FileRows` over the item's own file: cut them with slices
            (``values[a:b, c:d]``), which reads only the chunks or rows the region touches.
        window: ``(a_min, a_max)``, the intensity window of the presentation values; None when ``pixels`` are
            already the final [0, 1] values (``patch_mode="resize"``: the windowed image resized to the patch).
        spacing: the spacing of the spatial axes.
        values_offset: where ``pixels.values`` lie in the item's file, row after row, when they are the file's
            own bytes (an uncompressed single-frame DICOM image: see
            :attr:`medgen.io.image.ImageInfo.values_offset`); the cache then keeps this offset instead of a
            copy. None otherwise.
    """

    pixels: Pixels
    window: tuple[float, float] | None
    spacing: tuple[float, ...]
    values_offset: int | None = None


def decode(path: str, cfg: RunConfig, patch_size: Sequence[int]) -> DecodedImage:
    """The cached form of one item: read, integer-valued floats narrowed to integers, window from the counts
    of the values, and where the values lie in the file when they are its own bytes. In resize mode the whole
    deterministic chain runs and its result is kept (float32).

    Raises:
        ImageReadError: the item cannot be read.
    """
    if cfg.patch_mode == "resize":
        d = Compose(deterministic_transforms(cfg, patch_size))({"image": path})
        return DecodedImage(Pixels(d["image"].numpy()[0]), None, tuple(d["image_spacing"].tolist()))
    pixels, spacing, info = read_pixels(path)
    ints = integer_values(pixels.values)
    offset = info.values_offset if ints is pixels.values else None
    pixels = Pixels(ints, pixels.slope, pixels.intercept) if ints is not None else Pixels(pixels.presentation())
    return DecodedImage(pixels, percentile_window(pixels, *cfg.intensity_percentiles), spacing, offset)


def decoded_patch(image: DecodedImage, patch_size: Sequence[int] | None = None,
                  slices: Sequence[slice] | None = None) -> torch.Tensor:
    """``(1, *patch)`` float32: the region ``slices`` of the image windowed to [0, 1] and padded up to
    ``patch_size`` (as :func:`deterministic_transforms` window and pad), reading only that region of
    ``image.pixels``. Without ``slices``: the whole image, windowed."""
    values = image.pixels.values  # an ndarray, or a cache entry's ChunkedValues or FileRows: all cut with slices
    src, dst = [slice(None)] * values.ndim, None
    if slices is not None:
        before = [max(p - n, 0) // 2 for n, p in zip(values.shape, patch_size)]  # SpatialPad's symmetric padding
        src, dst = [], []
        for sl, pad, n in zip(slices, before, values.shape):
            start, stop = sl.start - pad, sl.stop - pad
            src.append(slice(max(start, 0), min(stop, n)))
            dst.append(slice(max(start, 0) - start, min(stop, n) - start))
    region = values[tuple(src)]
    img = torch.from_numpy(image.pixels.presentation(region))
    if image.window is not None:
        scale = ScaleIntensityRange(*image.window, *UNIT_RANGE, clip=True, dtype=torch.float32)
        track = get_track_meta()
        set_track_meta(False)  # the same arithmetic on a plain tensor: MetaTensor's bookkeeping cost more than the patch
        try:
            with one_thread():
                img = scale(img)
        finally:
            set_track_meta(track)
    if dst is None or tuple(img.shape) == tuple(sl.stop - sl.start for sl in slices):
        return img[None]
    out = torch.zeros((1, *(sl.stop - sl.start for sl in slices)), dtype=torch.float32)  # SpatialPad's zeros
    out[(0, *dst)] = img
    return out


def _padded_shape(image: DecodedImage, patch_size: Sequence[int]) -> tuple[int, ...]:
    return tuple(max(n, p) for n, p in zip(image.pixels.values.shape, patch_size))


class RandCropDecodedd(RandForegroundCropd):
    """:class:`RandForegroundCropd` of ``roi_size`` on a :class:`DecodedImage` as :func:`deterministic_transforms`
    would have windowed and padded it, reading only the patch of each draw: the same random draws (seeded the same
    way by ``Compose``), the same patch."""

    def cut(self, d: dict) -> dict:
        roi = self.cropper.roi_size
        self.randomize(_padded_shape(d[self.first_key(d)], roi))
        out = dict(d)
        for key in self.key_iterator(out):
            out[key] = decoded_patch(out[key], roi, self.cropper._slices)
        return out


class CropDecodedd(MapTransform):
    """The centre ``roi_size`` patch of a :class:`DecodedImage` as :func:`val_transforms` cuts it (windowed, padded),
    reading only the patch; ``roi_size=None``: the whole image (resize mode)."""

    def __init__(self, keys: KeysCollection, roi_size: Sequence[int] | None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.roi_size = None if roi_size is None else tuple(roi_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.roi_size is None:
                d[key] = decoded_patch(d[key])
            else:
                slices = CenterSpatialCrop(self.roi_size).compute_slices(_padded_shape(d[key], self.roi_size))
                d[key] = decoded_patch(d[key], self.roi_size, slices)
        return d


def cached_train_transforms(cfg: RunConfig, patch_size: Sequence[int], keys: str = "image") -> Compose:
    """:func:`train_transforms` on a :class:`DecodedImage`: the same patches from the same random state."""
    first = (RandCropDecodedd(keys, patch_size, cfg.patch_min_foreground) if cfg.patch_mode == "crop"
             else CropDecodedd(keys, None))
    return Compose([first, *augment_transforms(cfg, patch_size, keys), EnsureTyped(keys, dtype=torch.float32, track_meta=False)])


def cached_val_transforms(cfg: RunConfig, patch_size: Sequence[int], keys: str = "image") -> Compose:
    """:func:`val_transforms` on a :class:`DecodedImage`: the same patch."""
    roi = patch_size if cfg.patch_mode == "crop" else None
    return Compose([CropDecodedd(keys, roi), EnsureTyped(keys, dtype=torch.float32, track_meta=False)])
