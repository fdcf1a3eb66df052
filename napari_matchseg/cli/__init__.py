"""The ``matchseg`` command: banks, retrieval, weights and sample data from the shell.

Every failure the core can explain exits with status 2 and one line on stderr saying what to do;
results meant for other programs (``--json``) go to stdout, progress bars to stderr.
"""

from __future__ import annotations

import sys

from .. import __version__
from ..errors import MatchsegError
from . import bank, propose, train, volume, weights
from .common import Parser, add_device_args, progress_bar

COMMAND_GROUPS = (bank, weights, propose, volume, train)  # each module registers its commands on the parser


def build_parser() -> Parser:
    p = Parser(prog="matchseg", description="Segment medical images by reference.")
    p.add_argument("--version", action="version", version=f"napari-matchseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    k, least = getattr(args, "k", 1), (0 if hasattr(args, "proposer") else 1)  # -k 0: the proposer decides
    if k is not None and k < least:
        print(f"error: -k must be at least {least}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except MatchsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileExistsError as exc:
        print(f"error: {exc} (use --overwrite to replace it)", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused (full disk, no permission): one line, never a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything committed so far is kept", file=sys.stderr)
        return 130



__all__ = ["main", "build_parser", "add_device_args", "progress_bar"]
