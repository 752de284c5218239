"""The ``medgen`` command line: argument parsing, and the one place errors become one-line messages.

Each module in ``COMMANDS`` defines ``register(subparsers)``, which adds its sub-commands and sets ``func``
(called with the parsed arguments, returning the exit code). The work itself lives in the packages to the
left (``data``, ``training``, ``inference``); this package only parses arguments and reports.

Errors: :func:`main` catches :class:`medgen.errors.MedgenError` once and prints ``medgen: <message>`` (exit 2),
turns a file-system error (permission denied, disk full, ...) into ``medgen: <reason>: <path>`` and running out
of memory into one line with what to change (exit 2), and Ctrl-C into ``medgen: interrupted`` (exit 130). ``--debug`` (or ``MEDGEN_DEBUG=1``) shows the traceback instead. A bad argument prints one line
naming it (exit 2). Any other exception is a bug in medgen and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from medgen.errors import MedgenError, is_out_of_memory

COMMANDS = (
    "medgen.cli.data",  # demo-data, check-data
    "medgen.cli.train",  # train-vae, train-wgan, train-ldm
    "medgen.cli.infer",  # reconstruct, encode, decode, sample, check-copies, fit-decoder
    "medgen.cli.weights",  # weights list / fetch / export / import / verify
    "medgen.cli.public",  # prepare-public-data
)
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``medgen reconstruct: --count: invalid int value: 'x' (see --help)``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="medgen", description="Generative models for dental radiographs and CBCT: data checks, training, inference."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks (also: MEDGEN_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def report(exc: BaseException, debug: bool = False) -> int:
    """The exit code for ``exc``, after one line on stderr (or the traceback with ``debug``); re-raises bugs."""
    if isinstance(exc, KeyboardInterrupt):
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank gets Ctrl-C: one line is enough
            print("medgen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, MedgenError):
        if not debug and (exc.all_ranks or os.environ.get("RANK", "0") == "0"):
            print(exc.one_line(), file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, OSError) and exc.filename is not None:  # permissions, a full disk, a path that is a file
        if not debug:
            print(f"medgen: {exc.strerror or type(exc).__name__}: {exc.filename}", file=sys.stderr)
        return EXIT_ERROR
    if is_out_of_memory(exc):
        if not debug:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            print(f"medgen: out of memory ({first}); use a smaller image, patch_size, batch size or model, "
                  "or a device with more memory", file=sys.stderr)
        return EXIT_ERROR
    raise exc


def main(argv: list[str] | None = None) -> int:
    """``medgen COMMAND ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[:1] or os.environ.get("MEDGEN_DEBUG", "") not in ("", "0")
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except (KeyboardInterrupt, Exception) as exc:  # noqa: BLE001 - report() re-raises what is not the user's to fix
        return report(exc, debug)


def script_main(command: str) -> int:
    """Entry of the ``scripts/`` launchers: ``medgen COMMAND`` with the script's arguments."""
    return main([command, *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
