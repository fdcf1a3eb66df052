"""``matchseg segment | eval | demo``: proposals for folders of images, their scores, and the offline demo.

Every command builds one :class:`~napari_matchseg.pipeline.Pipeline` from its options; the options themselves come
from the proposer, refiner and retriever registries (a newly registered model is usable here with no edit).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError, MatchsegError, name_list
from ..fsutil import atomic_write_text
from .common import (add_device_args, add_option, add_registry_options, add_retriever_args, check_output_file,
                     progress_bar)


def add_proposal_args(p) -> None:
    """The options of one proposal: the bank, k, the models (from their registries), thresholds."""
    from ..pipeline import PipelineConfig
    from ..proposers import DEFAULT_PROPOSER, PROPOSERS
    from ..refiners import NO_REFINER, REFINERS, refiner_choices

    d = PipelineConfig()
    p.add_argument("--bank", help="reference bank folder (not needed by a proposer that uses no references, e.g. "
                                  "litemedsam with --prompts)")
    p.add_argument("--prompts", help='JSON file: {"image.png": {"boxes": [[x0, y0, x1, y1], ...], "points": '
                                     '[[x, y, 1 or 0], ...]}}, in each image\'s pixels (for proposers that take them)')
    p.add_argument("-k", type=int, default=d.k, help="number of supports (1-32)")
    p.add_argument("--proposer", default=DEFAULT_PROPOSER, choices=PROPOSERS.names(),
                   help="; ".join(f"{e.name}: {e.description}" for e in PROPOSERS))
    flags = add_registry_options(p, PROPOSERS)
    p.add_argument("--refine", default=NO_REFINER, choices=refiner_choices(),
                   help="; ".join(f"{e.name}: {e.description}" for e in REFINERS))
    p.add_argument("--refine-threshold", type=float, default=d.refine_threshold,
                   help="refinement prompts come from pixels whose probability reaches this")
    p.add_argument("--refine-margin", type=int, default=d.refine_margin, help="box margin in pixels")
    add_registry_options(p, REFINERS, skip=flags)
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help="probability above which a pixel is foreground")
    p.add_argument("--support", default=d.support, choices=("retrieved", "random"),
                   help="how supports are chosen (random is the ablation)")
    p.add_argument("--allow-self", action="store_true",
                   help="let a query that is itself in the bank use its own reference as support")
    add_retriever_args(p)


def pipeline_from_args(args):
    """The bank and the :class:`Pipeline` that a command's options describe (options checked before loading)."""
    from ..bank import ReferenceBank
    from ..pipeline import Pipeline, PipelineConfig, option_dest
    from ..proposers import PROPOSERS
    from ..refiners import REFINERS
    from ..retrieval import RETRIEVERS

    options = {option_dest(o): getattr(args, option_dest(o))
               for reg in (PROPOSERS, REFINERS, RETRIEVERS) for o in reg.options()}
    config = PipelineConfig(retriever=args.retriever, proposer=args.proposer, refiner=args.refine, options=options,
                            k=args.k, threshold=args.threshold, refine_threshold=args.refine_threshold,
                            refine_margin=args.refine_margin, support=args.support, allow_self=args.allow_self,
                            device=args.device).check()
    if args.bank is None and PROPOSERS.get(args.proposer).load().uses_supports:
        raise InputError(f"--bank is needed: the {PROPOSERS.get(args.proposer).label} proposer proposes from "
                         "references")
    bank = ReferenceBank.open(args.bank) if args.bank else None
    return bank, Pipeline(config).load()


def prompts_from_args(args, images) -> dict[str, dict] | None:
    """The prompts file's entries for ``images`` (checked before any work), or None without ``--prompts``."""
    if not args.prompts:
        return None
    from ..proposers import PROPOSERS
    from ..prompt_file import read_prompts

    if not PROPOSERS.get(args.proposer).load().takes_prompts:
        raise InputError(f"--prompts: the {PROPOSERS.get(args.proposer).label} proposer takes no box or point "
                         "prompts (litemedsam does)")
    return read_prompts(args.prompts, images)


def _mask_targets(images: list[Path], out: Path) -> list[Path]:
    """``out/<stem>.png`` for each image; refuses an ``--out`` that is a file and two images with one stem."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the masks (it is created if needed)")
    targets = [out / f"{p.stem}.png" for p in images]
    seen: dict[Path, str] = {}
    for p, t in zip(images, targets):
        if t in seen:
            raise InputError(f"{seen[t]} and {p.name} would both be written as {t.name}; rename one of them")
        seen[t] = p.name
    return targets


def cmd_segment(args) -> int:
    from ..image_io import list_images, write_mask

    images = list_images(args.images)
    if not images:
        raise InputError(f"no images in {args.images}")
    if args.overwrite and args.skip_existing:
        raise InputError("--overwrite replaces existing masks and --skip-existing keeps them: choose one")
    out = Path(args.out)
    targets = _mask_targets(images, out)
    existing = [t.name for t in targets if t.exists()]
    if existing and not (args.overwrite or args.skip_existing):
        raise MatchsegError(f"{len(existing)} masks already exist in {out} ({name_list(existing)}); nothing was "
                            "written. Use --skip-existing to segment only the other images, --overwrite to replace "
                            "them, or another --out folder")
    todo = [(p, t) for p, t in zip(images, targets) if not (args.skip_existing and t.exists())]
    prompts = prompts_from_args(args, images) or {}
    bank, pipeline = pipeline_from_args(args)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    failed: list[str] = []
    written = 0
    try:
        with progress_bar("segmenting") as update:
            for i, (path, target) in enumerate(todo):
                try:
                    _, proposal = pipeline.propose_file(bank, path, rng, prompts.get(path.name))
                except InputError as exc:  # this image cannot be used: say so at the end, go on with the others
                    failed.append(f"{path.name}: {exc}")
                    continue
                write_mask(target, proposal.mask(args.threshold), overwrite=args.overwrite)
                written += 1
                update(i + 1, len(todo))
    except (MatchsegError, OSError):
        print(f"stopped after writing {written} masks to {out}; they are complete. Run the same command with "
              "--skip-existing to go on from there", file=sys.stderr)
        raise
    skipped = len(images) - len(todo)
    print(f"wrote {written} masks (0/255 PNG, same size as each image) to {out}"
          + (f"; {skipped} already there were kept" if skipped else ""))
    for line in failed:
        print(f"error: not segmented: {line}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(todo)} images could not be segmented (listed above)", file=sys.stderr)
    return 1 if failed else 0


def cmd_eval(args) -> int:
    from ..image_io import list_images
    from ..pipeline import evaluate

    images = list_images(args.images)
    masks = {p.stem: p for p in list_images(args.masks)}
    pairs = [(p, masks[p.stem]) for p in images if p.stem in masks]
    if not pairs:
        raise InputError(f"no image in {args.images} has a mask with the same stem in {args.masks}")
    csv_path = args.csv or (str(Path(args.json).with_suffix(".csv")) if args.json else None)
    check_output_file(args.json, args.overwrite, "--json")
    check_output_file(csv_path, args.overwrite, "--csv")
    prompts = prompts_from_args(args, [p for p, _ in pairs])
    bank, pipeline = pipeline_from_args(args)
    with progress_bar("evaluating") as update:
        result = evaluate(pipeline, bank, pairs, update, prompts)
    print(f"n = {result['n']} (empty ground truth: {result['n_gt_empty']}), k = {args.k}, supports {args.support}")
    for key in ("dice", "iou", "hd95"):
        print(f"{key:>5}: {result[f'{key}_mean']:.4f} +- {result[f'{key}_std']:.4f}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))
    if csv_path:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(result["rows"][0]))
        w.writeheader()
        w.writerows(result["rows"])
        atomic_write_text(csv_path, buf.getvalue())
        print(f"per-image metrics: {csv_path}")
    return 0


def _overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None) -> np.ndarray:
    from scipy import ndimage as ndi

    from ..image_io import to_float_rgb

    rgb = (to_float_rgb(image) * 255).astype(np.uint8)
    for mask, colour in ((gt, (40, 220, 40)), (pred, (240, 40, 40))):
        if mask is not None:
            edge = mask & ~ndi.binary_erosion(mask, iterations=1)
            edge = ndi.binary_dilation(edge, iterations=1)
            rgb[edge] = colour
    return rgb


def cmd_demo(args) -> int:
    from PIL import Image

    from ..bank import ReferenceBank
    from ..image_io import write_mask
    from ..metrics import dice
    from ..pipeline import Pipeline, PipelineConfig
    from ..sample_data import KINDS, make_sample

    out = Path(args.out)
    bank_dir = out / "bank"
    if bank_dir.exists():
        import shutil

        shutil.rmtree(bank_dir)
    bank = ReferenceBank.create(bank_dir)
    held = []
    for kind in KINDS:
        triples = make_sample(kind, args.n + 3, seed=0)
        bank.add_many((img, m, name) for name, img, m in triples[:args.n])
        held += triples[args.n:]
    pipeline = Pipeline(PipelineConfig(options={"checkpoint": args.checkpoint}, device=args.device))
    tiles, lines = [], []
    for name, img, gt in held:
        p = pipeline.propose(bank, img)
        pred = p.mask(0.5)
        write_mask(out / "masks" / f"{name}.png", pred, overwrite=True)
        tiles.append(np.asarray(Image.fromarray(_overlay(img, pred, gt)).resize((192, 192))))
        lines.append(f"{name}: Dice {dice(pred, gt):.3f}, supports {', '.join(s.id for s in p.supports[:3])} ...")
    grid = np.concatenate([np.concatenate(tiles[i:i + 3], 1) for i in range(0, len(tiles), 3)], 0)
    Image.fromarray(grid).save(out / "overlay.png")
    print(f"bank of {len(bank)} generated references: {bank_dir}")
    print("\n".join(lines))
    print(f"masks: {out / 'masks'}\noverlay (green = truth, red = proposal): {out / 'overlay.png'}")
    return 0


def register(sub) -> None:
    c = sub.add_parser("segment", help="propose a mask for every image of a folder")
    c.add_argument("--images", required=True, help="folder of images to segment")
    c.add_argument("--out", required=True, help="folder for the masks (0/255 PNG, one per image, same file stem)")
    c.add_argument("--overwrite", action="store_true", help="replace masks already in --out")
    c.add_argument("--skip-existing", action="store_true",
                   help="keep masks already in --out and segment only the other images (to resume a run)")
    add_proposal_args(c)
    c.set_defaults(func=cmd_segment)

    c = sub.add_parser("eval", help="Dice, IoU and HD95 of the proposals against reference masks")
    c.add_argument("--images", required=True, help="folder of images to segment")
    c.add_argument("--masks", required=True, help="folder of their true masks (same file stems)")
    c.add_argument("--json", help="write the summary and per-image rows to this JSON file")
    c.add_argument("--csv", help="per-image CSV (default: beside --json)")
    c.add_argument("--overwrite", action="store_true", help="replace --json and --csv files that exist")
    add_proposal_args(c)
    c.set_defaults(func=cmd_eval)

    from ..proposers import CHECKPOINT

    c = sub.add_parser("demo", help="offline demo on generated sample data with the shipped checkpoint")
    c.add_argument("--out", default="matchseg-demo", help="folder for the bank, the masks and the overlay")
    c.add_argument("-n", type=int, default=9, help="references per sample kind")
    add_option(c, CHECKPOINT)
    add_device_args(c)
    c.set_defaults(func=cmd_demo)
