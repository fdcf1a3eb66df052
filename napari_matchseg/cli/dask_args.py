"""``--dask SCHEDULER`` and ``--chunk-size`` of ``segment`` and ``eval`` (docs/batch.md), checked before any model
loads."""

from __future__ import annotations

from ..errors import InputError


def add_dask_args(p) -> None:
    p.add_argument("--dask", metavar="SCHEDULER",
                   help="run on Dask: local[:N] (N worker processes here; default one per core) or a scheduler "
                        "address such as tcp://host:8786 (the bank and the folders must be on storage every "
                        "worker reads); see docs/batch.md")
    p.add_argument("--chunk-size", type=int, help="images per Dask task (default: about 8 chunks per worker, "
                                                   "at most 64 images)")


def check_dask_args(args) -> None:
    """A wrong ``--dask`` / ``--chunk-size``, or Dask not installed, is refused before any model loads."""
    if args.dask is None:
        if args.chunk_size is not None:
            raise InputError("--chunk-size is for --dask runs; add --dask local or a scheduler address")
        return
    from ..dask_batch import check_dask_installed, parse_scheduler

    parse_scheduler(args.dask)
    check_dask_installed()
    if args.chunk_size is not None and args.chunk_size < 1:
        raise InputError(f"--chunk-size must be at least 1, got {args.chunk_size}")
