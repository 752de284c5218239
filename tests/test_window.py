"""The intensity window from value counts equals np.percentile's, on real DICOM files and on random data."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel.testing
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medgen.data.window import integer_values, percentile_window
from medgen.io.image import Pixels
from medgen.io.reader import read_image, read_pixels

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent  # only files shipped inside the pydicom wheel
REAL = [
    "CT_small.dcm",  # int16, RescaleIntercept -1024
    "693_J2KI.dcm",  # JPEG 2000 CT, int16
    "MR_small_RLE.dcm",
    "examples_overlay.dcm",  # 12-bit uint16
    "image_dfl.dcm",  # uint8
    "rtdose.dcm",  # multi-frame uint32
    "JPEGLSNearLossless_16.dcm",
    "dicomdirtests/77654033/CR1/6154",  # MONOCHROME1 radiograph, RescaleSlope 0.684: an inverting, non-integer map
    "examples_rgb_color.dcm",  # colour: float luminance, no counts
]


def _numpy_window(pixels: Pixels, lower: float, upper: float) -> tuple[float, float]:
    return tuple(float(x) for x in np.percentile(pixels.presentation(), [lower, upper]))


@pytest.mark.parametrize("name", REAL + ["nibabel:anatomical.nii"])  # a big-endian int16 NIfTI volume
@pytest.mark.parametrize("percentiles", [(0.5, 99.5), (0.0, 100.0), (2.0, 98.0)])
def test_window_of_real_files_equals_np_percentile_of_the_image(name, percentiles):
    path = Path(nibabel.testing.data_path) / name[8:] if name.startswith("nibabel:") else TEST_FILES / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels, _, _ = read_pixels(path)
        image, _ = read_image(path)
    # what the reader hands to the window is what training windowed before: read_image's own array
    assert np.array_equal(pixels.presentation()[None], image)
    assert percentile_window(pixels, *percentiles) == tuple(float(x) for x in np.percentile(image, percentiles))


def test_grayscale_files_keep_their_stored_integers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct, cr = read_pixels(TEST_FILES / "CT_small.dcm")[0], read_pixels(TEST_FILES / REAL[7])[0]
    assert ct.values.dtype == np.int16 and (ct.slope, ct.intercept) == (1.0, -1024.0)
    assert cr.values.dtype == np.uint16 and cr.slope < 0  # MONOCHROME1: the inversion is part of the map


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64])
def test_window_of_random_integers_equals_np_percentile(dtype):
    rng = np.random.default_rng(list(np.dtype(dtype).str.encode()))
    info = np.iinfo(dtype)
    for trial in range(60):
        n = int(rng.choice([1, 2, 3, 7, 100, 4097]))
        span = int(rng.choice([1, 40, 5000, 70000]))
        low = int(rng.integers(max(info.min, -(2**40)), max(info.min + 1, min(info.max, 2**40) - span)))
        values = rng.integers(low, min(info.max, low + span), size=n, endpoint=True).astype(dtype)
        pixels = Pixels(values.reshape(1, -1), *[(1.0, 0.0), (1.0, -1024.0), (-1.0, 4095.0), (-0.684, 3000.98),
                                                   (2.5, 0.25), (0.0, 7.0)][trial % 6])
        lower, upper = np.sort(rng.uniform(0, 100, 2)) if trial % 3 else (0.5, 99.5)
        assert percentile_window(pixels, lower, upper) == _numpy_window(pixels, lower, upper), (trial, pixels)


def test_window_of_floats_is_counted_when_whole_and_partitioned_otherwise():
    rng = np.random.default_rng(0)
    whole = rng.integers(-1000, 3000, (64, 64)).astype(np.float32)  # e.g. a float NIfTI of HU
    assert integer_values(whole).dtype == np.int16
    fractional = whole + 0.5
    assert integer_values(fractional) is None
    wide = np.array([0, 2**30], dtype=np.int32)  # wider than any histogram: numpy's own method
    nan = whole.copy()
    nan[0, 0] = np.nan
    for values in (whole, fractional, wide, nan, whole.astype(np.float64)):
        pixels = Pixels(values)
        assert percentile_window(pixels, 0.5, 99.5) == pytest.approx(_numpy_window(pixels, 0.5, 99.5), rel=0, abs=0, nan_ok=True)


def test_bool_images_count_as_zero_and_one():
    mask = np.zeros((10, 10), dtype=bool)
    mask[:3] = True
    assert integer_values(mask).dtype == np.uint8
    assert percentile_window(Pixels(mask), 0.5, 99.5) == _numpy_window(Pixels(mask), 0.5, 99.5)
