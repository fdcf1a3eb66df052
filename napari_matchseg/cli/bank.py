"""``matchseg bank ...`` and ``matchseg retrieve``: build, inspect and search reference banks."""

from __future__ import annotations

import sys

from ..errors import MatchsegError
from .common import add_retriever_args, print_json, progress_bar, retriever_from_args


def cmd_bank_create(args) -> int:
    from ..bank import ReferenceBank

    bank = ReferenceBank.create(args.bank)
    print(f"created empty bank {bank.path}")
    return 0


def cmd_bank_add(args) -> int:
    from ..bank import ReferenceBank
    from ..image_io import list_images, read_image, read_labels, read_mask

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
                if args.objects:  # the file's values are object ids (checked above as a mask of this image)
                    mask = read_labels(mask_path, img.shape)
            except MatchsegError as exc:
                failed.append(f"{img_path.name}: {exc}")
                continue
            yield img, mask, img_path.name

    with progress_bar("adding") as update:
        refs = bank.add_many(items(), source=args.source, allow_empty=args.allow_empty,
                             on_duplicate="skip", total=len(pairs), progress=update)
    print(f"{bank.path}: added {refs.created} references, {len(refs) - refs.created} already present; "
          f"{len(bank)} in the bank")
    if unmatched:
        print(f"warning: {len(unmatched)} images have no mask with the same stem and were not added: "
              f"{', '.join(unmatched[:10])}{' ...' if len(unmatched) > 10 else ''}", file=sys.stderr)
    for line in failed:
        print(f"error: not added: {line}", file=sys.stderr)
    return 1 if failed else 0


def cmd_bank_info(args) -> int:
    from ..bank import ReferenceBank

    info = ReferenceBank.open(args.bank).info()
    if args.json:
        print_json(info)
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
    from ..bank import ReferenceBank

    refs = list(ReferenceBank.open(args.bank))
    if args.json:
        print_json([r.to_json() for r in refs])
        return 0
    for r in refs:
        origin = f"\t{r.origin['volume']} slice {r.origin['slice']}" if r.origin else ""
        print(f"{r.id}\t{'x'.join(map(str, r.shape))}\t{r.dtype}\t{r.source}\t"
              f"fg {r.foreground_fraction:.3f}\t{r.original_name}{origin}")
    return 0


def cmd_bank_remove(args) -> int:
    from ..bank import ReferenceBank

    bank = ReferenceBank.open(args.bank)
    for rid in args.ids:
        bank.remove(rid)
        print(f"removed {rid}")
    return 0


def cmd_bank_check(args) -> int:
    from ..bank import ReferenceBank

    problems = ReferenceBank.open(args.bank).check(fix=args.fix)
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)" + (" (orphans removed)" if args.fix and problems else ""))
    return 1 if any(not p.startswith("orphan") for p in problems) else 0


def cmd_bank_embed(args) -> int:
    from ..bank import ReferenceBank

    bank = ReferenceBank.open(args.bank)
    retriever = retriever_from_args(args)
    with progress_bar(f"embedding ({retriever.name})") as update:
        vecs = bank.embeddings(retriever, progress=update, must_cache=True)
    print(f"{len(bank)} references embedded with {retriever.model_id} (dim {vecs.shape[1] if len(vecs) else 0})")
    return 0


def cmd_retrieve(args) -> int:
    from ..bank import ReferenceBank
    from ..image_io import read_image
    from ..retrieval import retrieve

    bank = ReferenceBank.open(args.bank)
    if len(bank) == 0:
        raise MatchsegError(f"bank {bank.path} is empty; add references first (`matchseg bank add`)")
    image = read_image(args.image)
    with progress_bar("embedding bank") as update:
        matches = retrieve(bank, retriever_from_args(args), image, k=args.k, exclude=args.exclude or (),
                           progress=update)
    if args.json:
        print_json([{"id": m.id, "score": round(m.score, 6)} for m in matches])
    else:
        for m in matches:
            print(f"{m.score:.4f}\t{m.id}")
    return 0


def _command(group, name: str, func, help_text: str, bank_help: str = "bank folder", json_help: str | None = None):
    """A ``matchseg bank NAME BANK`` command (and ``--json`` when it can print JSON)."""
    c = group.add_parser(name, help=help_text)
    c.add_argument("bank", help=bank_help)
    if json_help:
        c.add_argument("--json", action="store_true", help=json_help)
    c.set_defaults(func=func)
    return c


def register(sub) -> None:
    bank = sub.add_parser("bank", help="create, fill and inspect reference banks").add_subparsers(
        dest="bank_command", required=True)
    _command(bank, "create", cmd_bank_create, "create an empty bank folder", bank_help="the folder to create")
    c = _command(bank, "add", cmd_bank_add, "add image/mask pairs matched by file stem (creates the bank if needed)")
    c.add_argument("--images", required=True, help="folder of images")
    c.add_argument("--masks", required=True, help="folder of masks with the same file stems")
    c.add_argument("--allow-empty", action="store_true", help="accept masks with no foreground")
    c.add_argument("--allow-full", action="store_true",
                   help="accept masks that are foreground everywhere (refused by default: it usually means a "
                        "background that is not 0)")
    c.add_argument("--source", default="manual", choices=("manual", "accepted_proposal"),
                   help="who made the masks, recorded with each reference")
    c.add_argument("--objects", action="store_true",
                   help="the masks' values are object ids (label images, 0 = background): keep them apart "
                        "(default: every non-zero pixel is foreground)")
    _command(bank, "info", cmd_bank_info, "summary of a bank", json_help="print the summary as JSON")
    _command(bank, "list", cmd_bank_list, "one line per reference", json_help="print the references as JSON")
    c = _command(bank, "remove", cmd_bank_remove, "remove references by id")
    c.add_argument("ids", nargs="+", help="reference ids (see `matchseg bank list`)")
    c = _command(bank, "check", cmd_bank_check, "verify files and hashes; --fix removes orphan files")
    c.add_argument("--fix", action="store_true", help="delete files that no reference owns")
    add_retriever_args(_command(bank, "embed", cmd_bank_embed, "compute and cache retrieval vectors for every "
                                                               "reference"))

    c = sub.add_parser("retrieve", help="the k references most similar to an image")
    c.add_argument("bank", help="bank folder")
    c.add_argument("image", help="the query image")
    c.add_argument("-k", type=int, default=8, help="how many references")
    c.add_argument("--exclude", nargs="*", help="reference ids never to return")
    c.add_argument("--json", action="store_true", help='print [{"id", "score"}, ...], best first')
    add_retriever_args(c)
    c.set_defaults(func=cmd_retrieve)
