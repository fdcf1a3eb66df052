"""The ``matchseg`` command: banks, retrieval, weights and sample data from the shell.

Every failure the core can explain exits with status 2 and one line on stderr saying what to do;
results meant for other programs (``--json``) go to stdout, progress bars to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import MatchsegError


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless there is none to say (no value, or a flag)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """The parser of ``matchseg`` and of each of its commands (sub-parsers are made of the same class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _progress(desc: str):
    """A (done, total) callback drawing a tqdm bar on stderr; returns (callback, close)."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="img", file=sys.stderr, leave=False, disable=None)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def add_device_args(p: argparse.ArgumentParser, threads: bool = False) -> None:
    """``--device`` (and ``--threads`` for commands that train), worded the same for every command."""
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    if threads:
        p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def _add_retriever_args(p: argparse.ArgumentParser) -> None:
    from .retrieval import DEFAULT_RETRIEVER, RETRIEVER_NAMES

    p.add_argument("--retriever", default=DEFAULT_RETRIEVER, choices=RETRIEVER_NAMES,
                   help="similarity model (handcrafted needs no download)")
    add_device_args(p)
    g = p.add_argument_group("CLIP options")
    g.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture")
    g.add_argument("--clip-pretrained", default="laion2b_s34b_b79k",
                   help="open_clip pretrained tag (downloaded on first use unless --clip-checkpoint)")
    g.add_argument("--clip-checkpoint", help="local open_clip weights file (nothing is downloaded)")
    g.add_argument("--clip-config", help="JSON model config for a custom open_clip architecture")
    g = p.add_argument_group("DINOv2 options")
    g.add_argument("--dinov2-arch", default="dinov2_vits14",
                   choices=("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14"),
                   help="DINOv2 backbone from torch.hub")
    g.add_argument("--dinov2-hub-dir", help="local copy of github.com/facebookresearch/dinov2")
    g.add_argument("--dinov2-checkpoint", help="local DINOv2 weights file (nothing is downloaded)")


def _retriever(args):
    from .retrieval import get_retriever

    if args.retriever == "clip":
        return get_retriever("clip", model_name=args.clip_model, pretrained=args.clip_pretrained,
                             checkpoint=args.clip_checkpoint, model_config=args.clip_config, device=args.device)
    if args.retriever == "dinov2":
        return get_retriever("dinov2", arch=args.dinov2_arch, hub_dir=args.dinov2_hub_dir,
                             checkpoint=args.dinov2_checkpoint, device=args.device)
    return get_retriever(args.retriever)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


# ------------------------------------------------------------------------------------ bank
def cmd_bank_create(args) -> int:
    from .bank import ReferenceBank

    bank = ReferenceBank.create(args.bank)
    print(f"created empty bank {bank.path}")
    return 0


def cmd_bank_add(args) -> int:
    from .bank import ReferenceBank
    from .image_io import list_images, read_image, read_mask

    images = list_images(args.images)
    masks = {p.stem: p for p in list_images(args.masks)}
    pairs = [(p, masks[p.stem]) for p in images if p.stem in masks]
    unmatched = [p.name for p in images if p.stem not in masks]
    if not pairs:
        raise MatchsegError(f"no image in {args.images} has a mask with the same file stem in {args.masks}")
    bank = ReferenceBank.open(args.bank, create=True)
    failed: list[str] = []

    def items():
        for img_path, mask_path in pairs:
            try:
                img = read_image(img_path)
                mask = read_mask(mask_path, img.shape, allow_empty=args.allow_empty, allow_full=args.allow_full)
            except MatchsegError as exc:
                failed.append(f"{img_path.name}: {exc}")
                continue
            yield img, mask, img_path.name

    update, close = _progress("adding")
    try:
        refs = bank.add_many(items(), source=args.source, allow_empty=args.allow_empty,
                             on_duplicate="skip", total=len(pairs), progress=update)
    finally:
        close()
    print(f"{bank.path}: added {refs.created} references, {len(refs) - refs.created} already present; "
          f"{len(bank)} in the bank")
    if unmatched:
        print(f"warning: {len(unmatched)} images have no mask with the same stem and were not added: "
              f"{', '.join(unmatched[:10])}{' ...' if len(unmatched) > 10 else ''}", file=sys.stderr)
    for line in failed:
        print(f"error: not added: {line}", file=sys.stderr)
    return 1 if failed else 0


def cmd_bank_info(args) -> int:
    from .bank import ReferenceBank

    info = ReferenceBank.open(args.bank).info()
    if args.json:
        _print_json(info)
        return 0
    print(f"bank       {info['path']}")
    print(f"references {info['references']}  (manual {info['sources']['manual']}, accepted proposals "
          f"{info['sources']['accepted_proposal']}, empty masks {info['empty_masks']})")
    for kind, n in info["image_types"].items():
        print(f"  {n:6d} x {kind}")
    for model, e in info["embeddings"].items():
        print(f"embeddings {model}: dim {e['dim']}, {e['covering_bank']}/{info['references']} references cached")
    print(f"created    {info['created']}   updated {info['updated']}")
    return 0


def cmd_bank_list(args) -> int:
    from .bank import ReferenceBank

    refs = list(ReferenceBank.open(args.bank))
    if args.json:
        _print_json([r.to_json() for r in refs])
        return 0
    for r in refs:
        print(f"{r.id}\t{'x'.join(map(str, r.shape))}\t{r.dtype}\t{r.source}\t"
              f"fg {r.foreground_fraction:.3f}\t{r.original_name}")
    return 0


def cmd_bank_remove(args) -> int:
    from .bank import ReferenceBank

    bank = ReferenceBank.open(args.bank)
    for rid in args.ids:
        bank.remove(rid)
        print(f"removed {rid}")
    return 0


def cmd_bank_check(args) -> int:
    from .bank import ReferenceBank

    problems = ReferenceBank.open(args.bank).check(fix=args.fix)
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)" + (" (orphans removed)" if args.fix and problems else ""))
    return 1 if any(not p.startswith("orphan") for p in problems) else 0


def cmd_bank_embed(args) -> int:
    from .bank import ReferenceBank

    bank = ReferenceBank.open(args.bank)
    retriever = _retriever(args)
    update, close = _progress(f"embedding ({retriever.name})")
    try:
        vecs = bank.embeddings(retriever, progress=update, must_cache=True)
    finally:
        close()
    print(f"{len(bank)} references embedded with {retriever.model_id} (dim {vecs.shape[1] if len(vecs) else 0})")
    return 0


# -------------------------------------------------------------------------------- retrieve
def cmd_retrieve(args) -> int:
    from .bank import ReferenceBank
    from .image_io import read_image
    from .retrieval import retrieve

    bank = ReferenceBank.open(args.bank)
    if len(bank) == 0:
        raise MatchsegError(f"bank {bank.path} is empty; add references first (`matchseg bank add`)")
    image = read_image(args.image)
    update, close = _progress("embedding bank")
    try:
        matches = retrieve(bank, _retriever(args), image, k=args.k, exclude=args.exclude or (), progress=update)
    finally:
        close()
    if args.json:
        _print_json([{"id": m.id, "score": round(m.score, 6)} for m in matches])
    else:
        for m in matches:
            print(f"{m.score:.4f}\t{m.id}")
    return 0


# --------------------------------------------------------------------------------- weights
def cmd_weights_list(args) -> int:
    from . import weights

    rows = [{"name": e.name, "size_mb": e.size_mb, "license": e.license, "status": weights.status(e),
             "sha256_pinned": bool(e.sha256), "path": str(weights.where(e)), "url": e.url,
             "description": e.description} for e in weights.REGISTRY.values()]
    if args.json:
        _print_json(rows)
        return 0
    print(f"cache folder: {weights.cache_dir()}" + ("   (offline)" if weights.is_offline() else ""))
    for r in rows:
        print(f"{r['name']:<24} {r['size_mb'] or 0:>7.0f} MB  {r['license']:<11} {r['status']:<16} {r['description']}")
    return 0


def cmd_weights_download(args) -> int:
    from . import weights

    from tqdm import tqdm

    entry = weights.get_entry(args.name)
    bar = tqdm(desc=entry.name, unit="B", unit_scale=True, file=sys.stderr, disable=None)

    def update(done, total):
        bar.total = total or None
        bar.n = done
        bar.refresh()

    try:
        path = weights.fetch(entry, progress=update)
    finally:
        bar.close()
    print(path)
    return 0


def cmd_weights_where(args) -> int:
    from . import weights

    print(weights.where(args.name))
    return 0


def cmd_sample(args) -> int:
    from .sample_data import write_sample

    folder = write_sample(args.folder, n_per_kind=args.n, overwrite=args.overwrite)
    print(f"wrote sample images and masks to {folder}/images and {folder}/masks")
    return 0


# ------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="matchseg", description="Segment medical images by reference.")
    p.add_argument("--version", action="version", version=f"napari-matchseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    bank = sub.add_parser("bank", help="create, fill and inspect reference banks").add_subparsers(
        dest="bank_command", required=True)
    c = bank.add_parser("create", help="create an empty bank folder")
    c.add_argument("bank", help="the folder to create")
    c.set_defaults(func=cmd_bank_create)
    c = bank.add_parser("add", help="add image/mask pairs matched by file stem (creates the bank if needed)")
    c.add_argument("bank", help="bank folder")
    c.add_argument("--images", required=True, help="folder of images")
    c.add_argument("--masks", required=True, help="folder of masks with the same file stems")
    c.add_argument("--allow-empty", action="store_true", help="accept masks with no foreground")
    c.add_argument("--allow-full", action="store_true",
                   help="accept masks that are foreground everywhere (refused by default: it usually means a "
                        "background that is not 0)")
    c.add_argument("--source", default="manual", choices=("manual", "accepted_proposal"),
                   help="who made the masks, recorded with each reference")
    c.set_defaults(func=cmd_bank_add)
    c = bank.add_parser("info", help="summary of a bank")
    c.add_argument("bank", help="bank folder")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(func=cmd_bank_info)
    c = bank.add_parser("list", help="one line per reference")
    c.add_argument("bank", help="bank folder")
    c.add_argument("--json", action="store_true", help="print the references as JSON")
    c.set_defaults(func=cmd_bank_list)
    c = bank.add_parser("remove", help="remove references by id")
    c.add_argument("bank", help="bank folder")
    c.add_argument("ids", nargs="+", help="reference ids (see `matchseg bank list`)")
    c.set_defaults(func=cmd_bank_remove)
    c = bank.add_parser("check", help="verify files and hashes; --fix removes orphan files")
    c.add_argument("bank", help="bank folder")
    c.add_argument("--fix", action="store_true", help="delete files that no reference owns")
    c.set_defaults(func=cmd_bank_check)
    c = bank.add_parser("embed", help="compute and cache retrieval vectors for every reference")
    c.add_argument("bank", help="bank folder")
    _add_retriever_args(c)
    c.set_defaults(func=cmd_bank_embed)

    c = sub.add_parser("retrieve", help="the k references most similar to an image")
    c.add_argument("bank", help="bank folder")
    c.add_argument("image", help="the query image")
    c.add_argument("-k", type=int, default=8, help="how many references")
    c.add_argument("--exclude", nargs="*", help="reference ids never to return")
    c.add_argument("--json", action="store_true", help='print [{"id", "score"}, ...], best first')
    _add_retriever_args(c)
    c.set_defaults(func=cmd_retrieve)

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

    from .cli_models import register

    register(sub)

    c = sub.add_parser("sample", help="write the built-in (generated) sample images and masks")
    c.add_argument("folder", help="where images/ and masks/ are written")
    c.add_argument("-n", type=int, default=8, help="images per kind")
    c.add_argument("--overwrite", action="store_true", help="replace sample files already there")
    c.set_defaults(func=cmd_sample)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "k", 1) is not None and getattr(args, "k", 1) < 1:
        print("error: -k must be at least 1", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
