"""benchmarks/bench_quality.py end to end in its quick mode: tiny contenders trained for seconds on demo data,
evaluated on whole held-out images through the tiled path, results written as JSON and two PNG figures."""

from __future__ import annotations

import importlib.util
import json
import math

from PIL import Image

from conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "benchmarks" / "bench_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_mode_writes_curves_final_measures_and_figures(tmp_path):
    bench = _bench()
    out = tmp_path / "results" / "quality"
    bench.main(["--quick", "--out", str(out), "--work", str(tmp_path / "work"), "--points", "3"])

    results = json.loads(out.with_suffix(".json").read_text())
    assert set(results["contenders"]) == {"tutorial", "recipe"}
    assert results["best_final_psnr"] in results["contenders"]
    for name, c in results["contenders"].items():
        assert c["steps"] >= 1 and c["train_seconds"] > 0
        # the tutorial's network at the quick size keeps its own latent channels: 3 (f2 here, 2 levels)
        assert c["settings"]["latent_channels"] == {"tutorial": 3, "recipe": 4}[name]
        assert c["settings"]["perceptual_weight"] == 0
        # all held-out whole images (2 dente + 2 edente, 48x48) at the end; points in time order before it
        assert c["final"]["images"] == 4 and len(c["final_per_image"]) == 4
        for measure in ("psnr", "ssim", "hf_ratio", "std_ratio"):
            assert math.isfinite(c["final"][measure]), (name, measure)
        minutes = [p["minutes"] for p in c["curve"]]
        assert 1 <= len(minutes) <= 3 and minutes == sorted(minutes)
        assert set(bench.MEASURES) <= set(c["curve"][-1])
    # 48x48 images in 32x32 tiles: tile borders inside, so a seam ratio is measured
    assert math.isfinite(results["contenders"]["recipe"]["final"]["seam_ratio"])

    curves = Image.open(f"{out}_curves.png")
    examples = Image.open(f"{out}_examples.png")
    assert curves.width > 600
    # three held-out images for each of two contenders, three panels a row
    assert examples.width == 3 * 320 and examples.height == 6 * (320 + 14)


def test_quick_mode_in_3d_trains_on_patches_and_evaluates_whole_volumes(tmp_path):
    bench = _bench()
    out = tmp_path / "quality_3d"
    bench.main(["--quick", "--dims", "3", "--contenders", "recipe", "--out", str(out), "--work", str(tmp_path / "work"),
                "--points", "2"])
    results = json.loads(out.with_suffix(".json").read_text())
    c = results["contenders"]["recipe"]
    assert results["dims"] == 3 and c["config"] == "configs/cbct_3d.json"
    assert c["settings"]["patch_size"] == [16, 16, 16] and c["settings"]["downsampling"] == 2
    # one 32^3 held-out volume per class, reconstructed whole through 16^3 tiles
    assert c["final"]["images"] == 2 and math.isfinite(c["final"]["psnr"]) and math.isfinite(c["final"]["seam_ratio"])
    examples = Image.open(f"{out}_examples.png")  # middle slices: the volume's two images, three panels each
    assert examples.width == 3 * 320 and examples.height == 2 * (320 + 14)
