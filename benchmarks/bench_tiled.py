"""Whole-image versus tiled encode+decode of AutoencoderKL: peak memory, time and seams at real sizes.

Each case (image size x method) runs in its own process, so that its peak resident memory (CPU) or peak
allocated memory (CUDA) is its own; a run that exceeds the memory limit or the time limit is recorded as
such ("out of memory", "timeout"), never dropped. Inputs are synthetic jaw radiographs / CBCT volumes from
medgen's demo generator at the benchmark size; the models are MONAI AutoencoderKLs with non-local attention
in the encoder and decoder bottleneck (random weights, or ``--checkpoint`` for a trained one). The tiled
runs also report the seam ratio of the output (1.0: tile borders invisible) and, where the whole-image run
finished, the largest difference between the two.

    python benchmarks/bench_tiled.py --json benchmarks/results/tiled_cpu.json
    python benchmarks/bench_tiled.py --device cuda --json benchmarks/results/tiled_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

CASES_2D = [(512, 512), (1024, 1024), (2048, 2048), (1435, 2943)]
CASES_3D = [(128, 128, 128), (256, 256, 256)]
# 2D: a mid-size model (the shipped config's layout, fewer channels, so CPU runs finish); 3D: a small model
MODELS = {
    2: dict(channels=(32, 64, 128), latent_channels=4, num_res_blocks=1, norm_num_groups=16),
    3: dict(channels=(16, 32, 64), latent_channels=4, num_res_blocks=1, norm_num_groups=8),
}
PATCH = {2: (256, 256), 3: (64, 64, 64)}


def _image(shape: tuple[int, ...]):
    import numpy as np

    from medgen.data.demo import make_jaw_image, make_jaw_volume

    rng = np.random.default_rng(0)
    if len(shape) == 2:
        side = max(shape)
        img = make_jaw_image(rng, side, teeth=True)
        top, left = (side - shape[0]) // 2, (side - shape[1]) // 2
        img = img[top: top + shape[0], left: left + shape[1]]
    else:
        img = make_jaw_volume(rng, shape[0], teeth=True)
        img = (img - img.min()) / (img.max() - img.min())
    return img.astype("float32")


def _model(dims: int, checkpoint: str | None, device: str):
    import torch

    from medgen.config import AutoencoderDef
    from medgen.models.autoencoder import build_autoencoder, load_autoencoder

    if checkpoint:
        return load_autoencoder(checkpoint, map_location=device)
    torch.manual_seed(0)
    ae = AutoencoderDef(spatial_dims=dims, attention_levels=(False,) * 3, **MODELS[dims])
    return build_autoencoder(ae).to(device).eval()


def child(args: argparse.Namespace) -> None:
    """One case in this process; prints one JSON line."""
    import torch

    from monai.transforms import DivisiblePad

    from medgen.metrics.seams import seam_ratio
    from medgen.models.tiled import Tiling, output_borders, tiled_decode, tiled_encode

    if args.mem_limit_gb and args.device == "cpu":
        limit = int(args.mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    shape = tuple(args.shape)
    dims = len(shape)
    torch.set_num_threads(args.threads)
    model = _model(dims, args.checkpoint, args.device)
    x = torch.from_numpy(_image(shape))[None, None]
    # as `medgen reconstruct` does: zero-pad each side to a multiple of the downsampling factor (2943 -> 2944)
    x = DivisiblePad(k=4)(x[0])[None].as_tensor().to(args.device)
    tiling = Tiling.of(args.tile or list(PATCH[dims]), args.overlap, dims, align=4, norm=args.norm)
    result = {"shape": list(shape), "method": args.method}
    start = time.perf_counter()
    with torch.no_grad():
        if args.method == "whole":
            z, _ = model.encode(x)
            y = model.decode(z)
        else:
            z, _ = tiled_encode(model, x, tiling)
            y = tiled_decode(model, z, tiling)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
    result["seconds"] = time.perf_counter() - start
    if args.method == "tiled":
        result.update(tile=list(tiling.tile), overlap=list(tiling.overlap), norm=tiling.norm,
                      seam_ratio=seam_ratio(y[0].float().cpu(), output_borders(x.shape[2:], tiling, 4)))
    if args.save:
        torch.save(y[0, 0].half().cpu(), args.save)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device.startswith("cuda"):
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result), flush=True)


def run_case(shape, method, args, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--method", method, "--shape", *map(str, shape), "--device", args.device,
           "--threads", str(args.threads), "--overlap", str(args.overlap), "--norm", args.norm,
           "--mem-limit-gb", str(args.mem_limit_gb), "--save", str(tmp / f"{method}_{'x'.join(map(str, shape))}.pt")]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    start = time.perf_counter()
    timeout = args.timeout if method == "tiled" else args.whole_timeout
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"shape": list(shape), "method": method, "status": f"did not finish in {timeout} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode == 0 and lines:
        return {**json.loads(lines[-1]), "status": "ok"}
    text = (out.stderr or "").lower()
    oom = "memory" in text or "alloc" in text or out.returncode in (-9, 137)
    status = f"out of memory (limit {args.mem_limit_gb} GB)" if oom else f"failed (exit {out.returncode})"
    return {"shape": list(shape), "method": method, "status": status, "seconds": time.perf_counter() - start,
            "error": (out.stderr or "").strip().splitlines()[-1:] }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", choices=("whole", "tiled"), help=argparse.SUPPRESS)
    p.add_argument("--shape", type=int, nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", default=None, help="a trained autoencoder (its architecture replaces the built-in models)")
    p.add_argument("--tile", type=int, nargs="+", default=None, help="tile size (default: the model's training patch)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--norm", choices=("tile", "image"), default="image")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per tiled case before it counts as not finishing")
    p.add_argument("--whole-timeout", type=int, default=300, help="seconds per whole-image case before it counts as not finishing")
    p.add_argument("--mem-limit-gb", type=float, default=16.0, help="address-space limit per case on the CPU")
    p.add_argument("--only", choices=("2d", "3d"), default=None)
    p.add_argument("--shapes", nargs="+", default=None, metavar="HxW[xD]", help="run only these sizes, e.g. 1435x2943")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.child:
        return child(args)

    import tempfile

    import monai
    import torch

    cases = ([] if args.only == "3d" else CASES_2D) + ([] if args.only == "2d" else CASES_3D)
    if args.shapes:
        cases = [tuple(int(n) for n in s.split("x")) for s in args.shapes]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in cases:
            pair = {}
            for method in ("tiled", "whole"):
                r = run_case(shape, method, args, Path(tmp))
                pair[method] = r
                rows.append(r)
                print(json.dumps(r), flush=True)
            if pair["whole"].get("status") == "ok" and pair["tiled"].get("status") == "ok":
                whole = torch.load(Path(tmp) / f"whole_{'x'.join(map(str, shape))}.pt", weights_only=True).float()
                tiled = torch.load(Path(tmp) / f"tiled_{'x'.join(map(str, shape))}.pt", weights_only=True).float()
                pair["tiled"]["max_abs_diff_to_whole"] = (whole - tiled).abs().max().item()
                pair["tiled"]["memory_ratio_whole_to_tiled"] = pair["whole"]["peak_rss_mb"] / pair["tiled"]["peak_rss_mb"]
    report = {
        "benchmark": "bench_tiled", "device": args.device, "threads": args.threads, "overlap": args.overlap,
        "norm": args.norm, "timeout_s": args.timeout, "whole_timeout_s": args.whole_timeout, "mem_limit_gb": args.mem_limit_gb,
        "models": {str(k): v for k, v in MODELS.items()}, "checkpoint": args.checkpoint,
        "torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version(),
        "loadavg": os.getloadavg(), "results": rows,
    }
    print("\n| size | method | status | time (s) | peak memory (MB) | seam ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        mem = r.get("peak_cuda_mb", r.get("peak_rss_mb"))
        print(f"| {'x'.join(map(str, r['shape']))} | {r['method']} | {r['status']} | "
              f"{r.get('seconds', float('nan')):.1f} | {mem if mem is None else round(mem)} | {r.get('seam_ratio', '')} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
