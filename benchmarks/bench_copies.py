"""The copy detector on a real data set: training images injected among samples in five variants, held-out
images of other patients, and noise, through `medgen check-copies` itself.

    python benchmarks/bench_copies.py --train /work/pubdata/panoramic/train --held-out /work/pubdata/panoramic/val \
        --json benchmarks/results/copies_panoramic.json

Variants of each of ``--count`` training images (every ``len/count``-th): exact, mirrored, brighter with more
contrast, 4% of rows and columns cropped and scaled back, shifted by 3% (edges repeated). Reported: how many of
each variant are flagged, how many held-out images are flagged, how many noise images are called unlike,
and the distances beside the calibrated threshold.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from medgen.data.transforms import read_windowed
from medgen.inference.check_copies import check_copies
from medgen.io.discovery import folder_items


def _png(x: np.ndarray, path: Path) -> None:
    Image.fromarray((np.clip(x, 0, 1) * 65535).astype(np.uint16)).save(path)


def _variants(x: np.ndarray) -> dict[str, np.ndarray]:
    h, w = x.shape
    c, s = max(1, round(0.04 * h)), max(1, round(0.03 * h))
    cropped = np.asarray(Image.fromarray(x[c:, c:].astype(np.float32)).resize((w, h), Image.BILINEAR))
    return {"exact": x, "mirrored": x[:, ::-1], "brighter": np.clip(0.15 + 0.8 * x, 0, 1), "cropped": cropped,
            "shifted": np.pad(x[:-s, s:], ((s, 0), (0, s)), mode="edge")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, type=Path, help="training folder (edente/ dente/)")
    ap.add_argument("--held-out", required=True, type=Path, help="held-out folder (other patients)")
    ap.add_argument("--count", type=int, default=20, help="training images injected, each in every variant")
    ap.add_argument("--held-out-count", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    train = sorted(it["image"] for it in folder_items(args.train))
    held = sorted(it["image"] for it in folder_items(args.held_out))[: args.held_out_count]
    sources = train[:: max(1, len(train) // args.count)][: args.count]
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples"
        samples.mkdir()
        for k, src in enumerate(sources):
            for name, x in _variants(read_windowed(src, (0.5, 99.5))[0].numpy()).items():
                _png(x, samples / f"{name}_{k:03d}.png")
        for k, src in enumerate(held):
            _png(read_windowed(src, (0.5, 99.5))[0].numpy(), samples / f"heldout_{k:03d}.png")
        rng = np.random.default_rng(0)
        for k in range(5):
            _png(rng.random((256, 256)), samples / f"noise_{k:03d}.png")
        report = check_copies(samples, args.train, Path(tmp) / "report")
    rows = report["samples"]

    def group(prefix):
        return [r for r in rows if r["sample"].startswith(prefix)]

    variants = {name: {"flagged": sum(r["flagged"] for r in group(name + "_")), "of": len(group(name + "_")),
                       "max_distance": max(r["distance"] for r in group(name + "_"))} for name in _variants(np.zeros((8, 8)))}
    result = {
        "train": str(args.train), "num_train": report["num_train"], "threshold": report["threshold"],
        "unlike_distance": report["unlike_distance"], "calibration": report["calibration"], "variants": variants,
        "held_out": {"flagged": sum(r["flagged"] for r in group("heldout_")), "of": len(held),
                     "min_distance": min(r["distance"] for r in group("heldout_"))},
        "noise": {"unlike": sum(r["unlike"] for r in group("noise_")), "of": 5,
                  "min_distance": min(r["distance"] for r in group("noise_"))},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
