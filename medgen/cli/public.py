"""``medgen prepare-public-data``: clones of the public dental repositories -> medgen data folders."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from medgen.data import public

    p = subparsers.add_parser(
        "prepare-public-data",
        help="arrange clones of the public panoramic and CT repositories as train/val data folders (fixed split)",
        description=(
            "Copy the panoramics of a clone of Instance_seg_teeth to OUT/panoramic/{train,val}/{dente,edente}/ and cut "
            "the CT of a clone of niivue-images into OUT/ct/{train,val}/ slabs, by the committed split lists. "
            "Offline: clone the repositories first. Use OUT/panoramic/train as data_base_dir and OUT/panoramic/val "
            "as val_dir (data_source=both)."
        ),
    )
    p.add_argument("out", type=Path, help="output folder (OUT/panoramic and OUT/ct must be new or empty)")
    p.add_argument("--panoramics", type=Path, metavar="CLONE", help=f"a clone of {public.PANORAMIC_REPOSITORY}")
    p.add_argument("--ct", type=Path, metavar="CLONE", help=f"a clone of {public.CT_REPOSITORY}")
    p.add_argument(
        "--split-lists", type=Path, metavar="DIR", default=public.DEFAULT_SPLITS,
        help="folder of panoramic_train.txt, panoramic_val.txt and ct_slabs.json (default: medgen's benchmarks/splits)",
    )
    p.set_defaults(func=prepare_public_data)


def prepare_public_data(args: argparse.Namespace) -> int:
    from medgen.data.public import prepare_public_data, summary_lines

    summary = prepare_public_data(args.out, args.panoramics, args.ct, args.split_lists)
    for line in summary_lines(summary):
        print(line)
    print(f"written to {args.out}")
    return 0
