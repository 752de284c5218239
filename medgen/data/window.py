"""The per-image intensity window: two percentiles of the presentation values, counted instead of sorted.

:func:`percentile_window` returns exactly what ``np.percentile(values, [lower, upper])`` (linear interpolation)
returns for the float32 presentation values, but for integer data (stored DICOM/PNG/NIfTI samples, and floats
that hold whole numbers) it counts the values (``torch.bincount``: one pass, no copy for uint8/int16 and 15-bit
data, and for 16-bit values below 2^15 no pass for their range either) and reads the order statistics off the
cumulative counts, instead of partitioning a float copy of the image: about 3 instead of 115-140 ms for a
2048x2048 uint16 radiograph on one core of the development machine, where the window is still the largest cost
of decoding an image for the cache. No well-kept library computes exact percentiles from counts with numpy's
interpolation, hence this module.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from medgen.io.image import Pixels

# Widest range of integer values counted (16M bins, 128 MB of counts); wider data is partitioned as numpy does.
HISTOGRAM_SPAN = 1 << 24
_NARROW = (np.uint8, np.int8, np.uint16, np.int16, np.int32)


def integer_values(values: np.ndarray) -> np.ndarray | None:
    """``values`` as integers of the narrowest type that holds them exactly, or None when they are not all whole
    numbers within int32. Integer arrays come back as they are (in native byte order); bool becomes uint8."""
    if values.dtype.kind in "ui":
        return values if values.dtype.isnative else values.astype(values.dtype.newbyteorder("="))
    if values.dtype.kind == "b":
        return values.view(np.uint8)
    if values.dtype.kind != "f" or values.size == 0:
        return None
    lo, hi = values.min(), values.max()
    if not (np.isfinite(lo) and np.isfinite(hi) and -(2.0**31) <= lo and hi < 2.0**31):
        return None
    for dtype in _NARROW:
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            ints = values.astype(dtype)
            return ints if np.array_equal(ints, values) else None
    return None


def value_counts(ints: np.ndarray) -> tuple[np.ndarray, int] | None:
    """``(counts, lowest)``: ``counts[i]`` is how many of ``ints`` equal ``lowest + i``; None when the values span
    more than :data:`HISTOGRAM_SPAN`."""
    flat = ints.ravel(order="K")  # memory order: a view for any contiguous layout
    if flat.itemsize == 2 and flat.size:
        # 16-bit values in [0, 2^15) (radiographs of up to 15 bits, CT stored unsigned): counted as they are, with no
        # pass for their range (torch checks the sign as it counts; negative as int16 means another range)
        try:
            counts = _bincount(flat.view(np.int16))
        except RuntimeError:
            pass
        else:
            lo = int(np.flatnonzero(counts)[0])
            return counts[lo:], lo
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo >= HISTOGRAM_SPAN or flat.dtype == np.uint64:
        return None
    if 0 <= lo and hi < HISTOGRAM_SPAN and (flat.dtype.kind == "i" or flat.dtype == np.uint8):
        shifted, offset = flat, 0  # torch.bincount counts these as they are
    elif flat.itemsize == 2 and hi - lo < 2**15:
        # v - lo fits in 15 bits, so the wrap-around subtraction in 16 bits is exact and its int16 view non-negative
        shifted, offset = (flat - flat.dtype.type(lo)).view(np.int16), lo
    else:
        shifted, offset = np.subtract(flat, lo, dtype=np.int64), lo
    counts = _bincount(shifted)
    return counts[lo - offset:], lo


def _bincount(values: np.ndarray) -> np.ndarray:
    with one_thread(), warnings.catch_warnings():
        # a read-only image (decoded as a view of the file's bytes) is counted in place, not copied: counting never
        # writes, and torch's warning that it could is beside the point here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.bincount(torch.from_numpy(values)).numpy()


def percentile_window(pixels: Pixels, lower: float, upper: float) -> tuple[float, float]:
    """The ``lower`` and ``upper`` percentiles of ``pixels.presentation()``, equal to
    ``np.percentile(pixels.presentation(), [lower, upper])`` (numpy's default linear method, same float64
    interpolation), from value counts when the values are integers.

    Args:
        pixels: an image's decoded values and their linear map to presentation values.
        lower, upper: percentiles in [0, 100].

    Returns:
        ``(a_min, a_max)`` as Python floats.
    """
    ints = integer_values(pixels.values)
    hist = value_counts(ints) if ints is not None else None
    if hist is None:
        return tuple(float(x) for x in np.percentile(pixels.presentation(), [lower, upper]))
    counts, lowest = hist
    cum = np.cumsum(counts)
    n = int(cum[-1])
    # numpy's linear method step by step (numpy.lib._function_base_impl._quantile with _lerp), same dtypes
    virtual = (n - 1) * np.true_divide([lower, upper], 100)
    previous = np.floor(virtual)
    above = virtual >= n - 1  # numpy takes the last element there, as index -1
    previous_index = np.where(above, -1, previous).astype(np.intp)
    next_index = np.where(above, -1, previous + 1).astype(np.intp)
    gamma = virtual - previous_index

    def order_statistic(index: np.ndarray) -> np.ndarray:
        # The k-th smallest presentation value: presentation() is monotonic in the stored value (float32
        # rounding never reverses an order), decreasing for an inverting map (MONOCHROME1).
        k = np.where(index < 0, n - 1, index)
        if pixels.slope < 0:
            k = n - 1 - k
        value = (np.searchsorted(cum, k, side="right") + lowest).astype(ints.dtype)
        return Pixels(value, pixels.slope, pixels.intercept).presentation()

    a, b = order_statistic(previous_index), order_statistic(next_index)
    diff = b - a
    window = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    return float(window[0]), float(window[1])


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch ops on one thread inside the block (as in loader workers already). For per-image work in the
    main process (``num_workers=0``): torch's parallel bincount is 4-5x slower than its serial loop (2048x2048:
    25 vs 5 ms), and a patch's few small ops took 70 instead of 1.3 ms per item with two threads on two busy
    cores, each op waiting for a second core."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

