"""benchmarks/gpu_check.sh runs end to end in its dry mode (CPU, tiny sizes, GPU-only settings left out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_the_gpu_check_runs_dry_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT_DIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check_dry.json").read_text())
    assert summary["dry_run"] and summary["device"] == "cpu"
    assert {k: v["exit_code"] for k, v in summary["parts"].items()} == dict.fromkeys(
        ["vae_step", "ldm_step", "ddp_1gpu", "host_syncs", "tiled_reconstruct"], 0)
    vae, ldm = (json.loads((tmp_path / f"{name}_step_dry.json").read_text()) for name in ("train", "ldm"))
    assert set(vae["modes"]) == set(ldm["modes"]) == {"fp32", "bf16"}
    assert vae["max_weight_diff_after_one_step"] < 1e-4 and ldm["max_weight_diff_after_one_step"] < 1e-6  # same math
    assert (tmp_path / "tiled_check_dry.json").is_file()
    assert not list((ROOT / "benchmarks" / "results").glob("*_dry.json"))  # the recorded results are left alone
