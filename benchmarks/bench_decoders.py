"""ProgressiveDecoder: inference preparation and gradient checkpointing, side by side in one run.

Inference: the same trained weights are timed as

* ``eval``            ``model.eval()`` (the baseline),
* ``eval+cl``         eval with channels-last weights only (to attribute the gain),
* ``fused``           ``prepare_for_inference(channels_last=False)`` (Conv-BN fusion, frozen weights),
* ``prepared``        ``prepare_for_inference()`` (fusion + channels-last, the default),
* ``prepared+compile`` ``prepare_for_inference(compile_mode="default")`` where torch.compile works.

Variants are interleaved over ``--repeats`` rounds, so machine load affects all of them alike; the
speed-ups use the best round of each variant (as ``timeit`` does: the least disturbed measurement) and
the medians are reported beside them. Outputs are checked against the eval output.

Training memory: peak memory of one forward + backward step with and without
``enable_gradient_checkpointing()``, for the specified default geometry and for a decoder with several
full-resolution refinement layers. CUDA uses ``torch.cuda.max_memory_allocated``; CPU reads the
allocator totals of the PyTorch profiler's memory trace.

Usage::

    python benchmarks/bench_decoders.py --json results.json
    python benchmarks/bench_decoders.py --input-size 512 --memory-size 1024 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medgen.models.progressive_decoder import ProgressiveDecoder  # noqa: E402 (after the sys.path line)


def _trained(model: ProgressiveDecoder, steps: int = 3) -> ProgressiveDecoder:
    """A few optimiser steps so BatchNorm running statistics and weights are not at their initial values."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model().float().mean().backward()
        opt.step()
    return model.eval()


def bench_inference(args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    base = _trained(ProgressiveDecoder(args.input_size, args.output_size).to(device))
    variants: dict[str, ProgressiveDecoder] = {"eval": base}
    cl = copy.deepcopy(base).to(memory_format=torch.channels_last)
    variants["eval+cl"] = cl
    variants["fused"] = copy.deepcopy(base).prepare_for_inference(channels_last=False)
    variants["prepared"] = copy.deepcopy(base).prepare_for_inference()
    compile_note = "skipped (--no-compile)"
    if not args.no_compile:
        try:
            compiled = copy.deepcopy(base).prepare_for_inference(compile_mode="default")
            with torch.no_grad():
                compiled()  # compile now, outside the timed loops
            variants["prepared+compile"] = compiled
            compile_note = "ok"
        except Exception as e:  # no compiler toolchain, unsupported platform, ...
            compile_note = f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:200]}"

    with torch.no_grad():
        reference = base()
        max_abs_diff = {k: float((m() - reference).abs().max()) for k, m in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, m in variants.items():
            times[k].append(m.benchmark(num_iterations=args.iterations, warmup=args.warmup)["avg_time_ms"])
    median = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    return {
        "input_size": args.input_size,
        "output_size": args.output_size or args.input_size,
        "num_parameters": sum(p.numel() for p in base.parameters()),
        "compile": compile_note,
        "best_ms": best,
        "median_ms": median,
        "all_ms": times,
        "speedup_vs_eval": {k: best["eval"] / v for k, v in best.items()},
        "median_speedup_vs_eval": {k: median["eval"] / v for k, v in median.items()},
        "max_abs_diff_vs_eval": max_abs_diff,
    }


def _peak_cpu_mb(step) -> float:
    """Peak CPU allocator usage (MB above the level at the start) while ``step()`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.remove(path)
    mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    if not mem:
        return float("nan")
    start = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return (max(e["args"]["Total Allocated"] for e in mem) - start) / 2**20


def _peak_cuda_mb(step, device: torch.device) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - start) / 2**20


def bench_memory(args: argparse.Namespace, device: torch.device) -> dict:
    size = args.memory_size
    configs = {
        # the specified architecture: channels halve while the size doubles, so the last layer dominates
        "default": dict(input_size=size, latent_channels=args.memory_latent),
        # several layers at full resolution (deeper refinement), where stored activations add up
        "refinement": dict(
            input_size=size,
            latent_channels=args.memory_latent,
            channel_progression=[64, 32, 16, 8, 8, 8, 8, 8, 8, 8, 8, 1],
        ),
    }
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    out: dict = {"size": size, "memory_format": args.memory_format, "device": device.type, "configs": {}}
    for name, kwargs in configs.items():
        row = {}
        for ckpt in (False, True):
            torch.manual_seed(0)
            model = ProgressiveDecoder(**kwargs).to(device, memory_format=fmt).train()
            if ckpt:
                model.enable_gradient_checkpointing()
            model().float().mean().backward()  # warm-up: allocator pools, oneDNN primitives
            model.zero_grad(set_to_none=True)

            def step(model: ProgressiveDecoder = model) -> None:
                model().float().mean().backward()

            row["checkpointing" if ckpt else "baseline"] = (
                _peak_cuda_mb(step, device) if device.type == "cuda" else _peak_cpu_mb(step)
            )
        row["reduction"] = 1.0 - row["checkpointing"] / row["baseline"]
        row["num_upsample_layers"] = model.num_upsample_layers
        row["channel_progression"] = model.channel_progression
        out["configs"][name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-size", type=int, default=128, help="inference grid size (default 128, CPU-friendly)")
    p.add_argument("--output-size", type=int, default=None, help="object size (default: input size)")
    p.add_argument("--iterations", type=int, default=10, help="timed passes per round (default 10)")
    p.add_argument("--warmup", type=int, default=5, help="untimed passes per round (default 5)")
    p.add_argument("--repeats", type=int, default=15, help="interleaved rounds per variant (default 15)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--memory-size", type=int, default=512, help="grid size of the memory comparison (default 512)")
    p.add_argument(
        "--memory-latent", type=int, default=64, help="latent channels of the memory comparison (default 64)"
    )
    p.add_argument("--memory-format", choices=("channels_last", "contiguous"), default="channels_last")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's choice)")
    p.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    inference = bench_inference(args, device)
    memory = bench_memory(args, device)
    results = {
        "environment": {
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "inference": inference,
        "memory": memory,
    }

    print(
        f"\nProgressiveDecoder inference, input {inference['input_size']}, {inference['num_parameters']:,} parameters, "
        f"{results['environment']['device']}, {torch.get_num_threads()} threads, {args.repeats} rounds of "
        f"{args.iterations} passes\n"
    )
    print("| variant | best ms/pass | speed-up vs eval | median ms/pass | median speed-up | max abs diff vs eval |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, ms in inference["best_ms"].items():
        print(
            f"| {k} | {ms:.3f} | {inference['speedup_vs_eval'][k]:.2f}x | {inference['median_ms'][k]:.3f} | "
            f"{inference['median_speedup_vs_eval'][k]:.2f}x | {inference['max_abs_diff_vs_eval'][k]:.1e} |"
        )
    if inference["compile"] != "ok":
        print(f"\ntorch.compile: {inference['compile']}")
    print(
        f"\nTraining step peak memory, grid {memory['size']}, latent {args.memory_latent}, {memory['memory_format']}, "
        f"{device.type}\n"
    )
    print("| config | baseline MB | checkpointing MB | reduction |")
    print("|---|---:|---:|---:|")
    for name, row in memory["configs"].items():
        print(f"| {name} | {row['baseline']:.1f} | {row['checkpointing']:.1f} | {100 * row['reduction']:.1f}% |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
