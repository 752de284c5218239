"""``medgen weights list | fetch | export | import | verify``: the pretrained networks in the weights directory."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from medgen.io import weights


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "weights",
        help="list, fetch, export, import and verify the pretrained networks medgen can use",
        description=(
            "The pretrained networks (perceptual losses, FID/KID features) live in one weights directory: "
            f"${weights.ENV_HOME}, by default ~/.cache/medgen. Training, metrics, check-data and the bundles read it; "
            "`fetch` is the only command of medgen that downloads. Every file is checked against the SHA-256 medgen records."
        ),
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = sub.add_parser("list", help="every network, whether it is here, where, its size and checksum")
    a.set_defaults(func=list_networks)
    a = sub.add_parser("fetch", help="download a network from its source (needs internet), verified")
    a.add_argument("name", metavar="NAME", help="a network from `medgen weights list`")
    a.add_argument("--to", metavar="DIR", help=f"weights directory to place it in (default ${weights.ENV_HOME})")
    a.add_argument("--unverified", action="store_true",
                   help="also fetch files for which medgen records no checksum (none was published)")
    a.set_defaults(func=fetch)
    a = sub.add_parser("export", help="write a network into one archive file, to carry to an offline machine")
    a.add_argument("name", metavar="NAME", help="a network present here (`medgen weights list`)")
    a.add_argument("archive", metavar="ARCHIVE", help="the archive to write (a .tar; never overwritten)")
    a.set_defaults(func=export)
    a = sub.add_parser("import", help="place the networks of an archive made by `export`, verified")
    a.add_argument("archive", metavar="ARCHIVE", help="an archive made by `medgen weights export`")
    a.add_argument("--to", metavar="DIR", help=f"weights directory to place them in (default ${weights.ENV_HOME})")
    a.set_defaults(func=import_)
    a = sub.add_parser("verify", help="recompute the checksum of every network file present")
    a.set_defaults(func=verify)


def _note_registry() -> None:
    """A replaced registry changes which files are accepted: say so every time."""
    override = weights.registry_override()
    if override:
        print(f"medgen: note: checksums come from {weights.ENV_REGISTRY}={override}, not medgen's own registry",
              file=sys.stderr)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _home_line(home) -> str:
    how = f"${weights.ENV_HOME}" if os.environ.get(weights.ENV_HOME) else f"default; set ${weights.ENV_HOME} to move it"
    return f"weights directory: {home} ({how})"


def list_networks(args: argparse.Namespace) -> int:
    _note_registry()
    home = weights.weights_home()
    print(_home_line(home))
    rows = [("NAME", "USE", "HERE", "SIZE", "CHECKSUM", "SOURCE")]
    where = []
    for net in weights.registry().values():
        missing = net.missing(home)
        here = "yes" if not missing else "partial" if net.has_weights(home) else "no"
        size = sum((home / f.path).stat().st_size for f in net.files if (home / f.path).is_file())
        rows.append((net.name, net.use, here, _size(size) if size else "-", net.checksums, net.source))
        if not missing:
            where.append(f"  {net.name}: {home / net.weights.path}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    if where:
        print("present:")
        print("\n".join(where))
    print("`medgen weights verify` recomputes the checksums of the files present.")
    return 0


def fetch(args: argparse.Namespace) -> int:
    _note_registry()
    files = weights.fetch(args.name, args.to, unverified=args.unverified, progress=sys.stderr.isatty())
    net = weights.network(args.name)
    size = sum(p.stat().st_size for p in files)
    checked = {"sha256": "SHA-256 verified", "sha256 prefix": "SHA-256 prefix verified"}.get(
        net.checksums, "not verified: medgen records no checksum for some files")
    home = Path(args.to) if args.to else weights.weights_home()
    print(f"{args.name}: {len(files)} files, {_size(size)} in {home} ({checked})")
    return 0


def export(args: argparse.Namespace) -> int:
    _note_registry()
    archive = weights.export(args.name, args.archive)
    print(f"wrote {args.name} to {archive} ({_size(archive.stat().st_size)}); on the offline machine run "
          f"`medgen weights import {archive.name}`")
    return 0


def import_(args: argparse.Namespace) -> int:
    _note_registry()
    done = weights.import_archive(args.archive, args.to)
    home = args.to or weights.weights_home()
    print(f"imported {', '.join(done.networks)} into {home} ({len(done.files)} files, SHA-256 verified)")
    for path in done.unverified:
        print(f"  {path}: medgen records no checksum for it; checked against the archive's own manifest only")
    return 0


def verify(args: argparse.Namespace) -> int:
    _note_registry()
    home = weights.weights_home()
    checks = weights.verify(home)
    if not checks:
        print(f"no networks in {home}; `medgen weights list` names them")
        return 0
    for name in dict.fromkeys(c.network for c in checks):
        mine = [c for c in checks if c.network == name]
        counts = {s: sum(c.status == s for c in mine) for s in ("ok", "mismatch", "missing", "unverified")}
        print(f"{name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    bad = [c for c in checks if c.status == "mismatch"]
    if bad:
        raise weights.mismatch_error(bad[0], len(bad))
    missing = [c for c in checks if c.status == "missing"]
    if missing:
        raise weights.WeightsError(f"{missing[0].path} of {missing[0].network} is missing; run "
                                   f"`medgen weights fetch {missing[0].network}` (or `medgen weights import ARCHIVE`)")
    return 0
