"""The realism measures of benchmarks/bench_sampling.py on constructed sets: the classifier two-sample test
tells apart what differs and not what does not, and its interval is the Wilson score interval."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_sampling  # noqa: E402


def _blobs(n: int, seed: int, sharp: bool) -> torch.Tensor:
    """``n`` 32x32 images of a bright disc at a random place on noise; ``sharp``: a hard edge, else blurred."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    out = []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * 16 + 8).tolist()
        r = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        disc = (r < 7).float() if sharp else torch.sigmoid((7 - r) / 3)
        out.append((0.6 * disc + 0.1 * torch.rand(32, 32, generator=g))[None])
    return torch.stack(out)


def test_two_sample_test_tells_sharp_from_blurred_discs_but_not_two_draws_of_the_same():
    sharp, blurred, sharp_again = _blobs(40, 0, True), _blobs(40, 1, False), _blobs(40, 2, True)
    differ = bench_sampling.two_sample_test(sharp, blurred, size=32, epochs=25)
    same = bench_sampling.two_sample_test(sharp, sharp_again, size=32, epochs=25)
    assert differ["c2st_test_images"] == 40
    assert differ["c2st_accuracy"] >= 0.9 and differ["c2st_ci95"][0] > 0.5
    lo, hi = same["c2st_ci95"]
    assert lo <= 0.5 <= hi and same["c2st_accuracy"] < 0.75


def test_wilson_interval_matches_the_formula_at_known_points():
    assert bench_sampling.wilson_interval(27, 54) == pytest.approx((0.3711, 0.6289), abs=1e-4)
    lo, hi = bench_sampling.wilson_interval(54, 54)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.9336, abs=1e-4)
    assert bench_sampling.wilson_interval(0, 0) == (0.0, 1.0)
