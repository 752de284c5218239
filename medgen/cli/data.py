"""``medgen demo-data`` and ``medgen check-data``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medgen.cli.train import add_set_argument
from medgen.config import ConfigError
from medgen.errors import MedgenError


def register(subparsers: argparse._SubParsersAction) -> None:
    from medgen.data import demo

    p = subparsers.add_parser(
        "demo-data",
        help="write a small synthetic DICOM data set (edente/ and dente/) to try medgen without patient data",
        description=demo.__doc__.splitlines()[0],
    )
    p.add_argument("out", type=Path, help="output folder (created; a previous demo folder there is replaced)")
    p.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2, help="2: panoramic images, 3: CBCT volumes")
    p.add_argument("--count", type=int, default=16, help="images (or volumes) per class (default 16)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 128 for 2D, 32 for 3D)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    p.set_defaults(func=demo_data)

    p = subparsers.add_parser(
        "check-data",
        help="read every image a config (or folder) would train on and report unusable files",
        description=(
            "Read every image with medgen's reader and print, per class, the usable files (shapes, bit depths, "
            "modalities, photometric interpretations, transfer syntaxes) and every unusable file with its reason. "
            "Exit 0 when all files are usable, 1 otherwise. Reports name files relative to data_base_dir and "
            "contain no patient data."
        ),
    )
    p.add_argument("target", metavar="CONFIG_OR_DIR", help="a config JSON (data_base_dir, data_source, ...) or a folder")
    p.add_argument("--json", metavar="REPORT", help="also write the report as JSON")
    p.add_argument("--spatial-dims", type=int, choices=(2, 3), help="expected dimensionality (default: from config)")
    p.add_argument("--patch-size", type=int, nargs="+", metavar="N", help="minimum size per axis (default: from config)")
    p.add_argument("--workers", type=int, default=2, help="reading processes (0: serial; default 2)")
    p.add_argument("--cache", metavar="FILE", help="JSON cache of results by path, size and mtime (skip unchanged files)")
    add_set_argument(p, "data_source=both")
    p.set_defaults(func=check_data)


def demo_data(args: argparse.Namespace) -> int:
    from medgen.data.demo import DEFAULT_SIZE, write_demo_dataset

    out = write_demo_dataset(args.out, args.spatial_dims, args.count, args.size, args.seed)
    size = args.size or DEFAULT_SIZE[args.spatial_dims]
    shape = f"{size}x{size} images" if args.spatial_dims == 2 else f"{size}^3 volumes"
    n = args.count
    print(f"wrote {2 * n} synthetic {shape} ({n} edente, {n} dente, seed {args.seed}) to {out}")
    return 0


def _network_notes(method, cfg) -> list[str]:
    """Whether the pretrained networks a config trains with are in the weights directory (training stops
    before its first step without them); a note beside the data report, which alone sets the exit code."""
    return [f"{label}: " + (f"missing, training would stop: {problem}" if problem else "on this machine")
            for label, problem in method.pretrained_networks(cfg)]


def check_data(args: argparse.Namespace) -> int:
    from medgen.data.check import format_report, scan_files, write_report_json
    from medgen.io.discovery import data_source

    source = data_source(args.target, args.overrides)
    method = None
    if source.config is not None:
        from medgen.training.methods import trainer_for

        method = trainer_for(source.config)
    elif args.overrides:
        raise ConfigError(f"--set applies to a config; {args.target} is not a config JSON")
    spatial_dims = args.spatial_dims or (source.config.spatial_dims if source.config else None)
    notes = []
    patch_size = args.patch_size
    if patch_size is None and method is not None:
        try:
            patch_size = method.checked_size(source.config)
        except MedgenError as e:  # e.g. a latent diffusion config whose autoencoder is not trained yet
            notes.append(f"image sizes not checked: {e}")
    if patch_size is not None and spatial_dims is not None and len(patch_size) != spatial_dims:
        raise ConfigError(f"--patch-size {patch_size} does not have {spatial_dims} values (spatial_dims); give one per axis")
    reports = scan_files(source.items, source.base, spatial_dims, patch_size, workers=args.workers,
                         cache_path=args.cache, progress=sys.stderr.isatty())
    print(format_report(reports))
    for line in [*notes, *(_network_notes(method, source.config) if method else ())]:
        print(line)
    if args.json:
        settings = {"spatial_dims": spatial_dims, "patch_size": patch_size}
        print(f"Report written to {write_report_json(reports, args.json, settings)}")
    return 0 if all(r.ok for r in reports) else 1
