"""``matchseg weights ...`` and ``matchseg sample``: model checkpoints and the built-in sample data."""

from __future__ import annotations

from .common import print_json, progress_bar


def cmd_weights_list(args) -> int:
    from .. import weights

    rows = [{"name": e.name, "size_mb": e.size_mb, "license": e.license, "status": weights.status(e),
             "sha256_pinned": bool(e.sha256), "path": str(weights.where(e)), "url": e.url,
             "description": e.description} for e in weights.REGISTRY.values()]
    if args.json:
        print_json(rows)
        return 0
    print(f"cache folder: {weights.cache_dir()}" + ("   (offline)" if weights.is_offline() else ""))
    for r in rows:
        print(f"{r['name']:<24} {r['size_mb'] or 0:>7.0f} MB  {r['license']:<11} {r['status']:<16} {r['description']}")
    return 0


def cmd_weights_download(args) -> int:
    from .. import weights

    entry = weights.get_entry(args.name)
    with progress_bar(entry.name, unit="B") as update:
        path = weights.fetch(entry, progress=update)
    print(path)
    return 0


def cmd_weights_where(args) -> int:
    from .. import weights

    print(weights.where(args.name))
    return 0


def cmd_sample(args) -> int:
    from ..sample_data import write_sample

    folder = write_sample(args.folder, n_per_kind=args.n, overwrite=args.overwrite)
    print(f"wrote sample images and masks to {folder}/images and {folder}/masks")
    return 0


def register(sub) -> None:
    w = sub.add_parser("weights", help="model checkpoints: list, download, where").add_subparsers(
        dest="weights_command", required=True)
    c = w.add_parser("list", help="known checkpoints and whether they are on this machine")
    c.add_argument("--json", action="store_true", help="print the list as JSON")
    c.set_defaults(func=cmd_weights_list)
    c = w.add_parser("download", help="download (or resume) a checkpoint into the cache")
    c.add_argument("name", help="a name from `matchseg weights list`")
    c.set_defaults(func=cmd_weights_download)
    c = w.add_parser("where", help="the exact path where a checkpoint is or must be put")
    c.add_argument("name", help="a name from `matchseg weights list`")
    c.set_defaults(func=cmd_weights_where)

    c = sub.add_parser("sample", help="write the built-in (generated) sample images and masks")
    c.add_argument("folder", help="where images/ and masks/ are written")
    c.add_argument("-n", type=int, default=8, help="images per kind")
    c.add_argument("--overwrite", action="store_true", help="replace sample files already there")
    c.set_defaults(func=cmd_sample)
