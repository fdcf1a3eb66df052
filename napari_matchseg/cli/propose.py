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
from ..fsutil import atomic_write_text, check_output_folder, remove_stale_temp_files
from .common import add_device_args, add_option, check_output_file, progress_bar
from .dask_args import add_dask_args, check_dask_args
from .proposal_args import add_proposal_args, config_from_args, pipeline_from_args, prompts_from_args


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
    from ..batch import segment_chunk, segment_one
    from ..image_io import list_images
    from .volume import list_volumes, segment_volumes

    out = Path(args.out)
    check_output_folder(out, [args.images])
    volumes = list_volumes(args.images)
    if volumes:
        if args.dask or args.prompts or args.skip_existing:
            raise InputError("--dask, --prompts and --skip-existing are for folders of 2D images; segment volumes "
                             "without them")
        return segment_volumes(args, volumes, out)
    images = list_images(args.images)
    if not images:
        raise InputError(f"no images in {args.images}")
    if args.overwrite and args.skip_existing:
        raise InputError("--overwrite replaces existing masks and --skip-existing keeps them: choose one")
    targets = _mask_targets(images, out)
    existing = [t.name for t in targets if t.exists()]
    if existing and not (args.overwrite or args.skip_existing):
        raise MatchsegError(f"{len(existing)} masks already exist in {out} ({name_list(existing)}); nothing was "
                            "written. Use --skip-existing to segment only the other images, --overwrite to replace "
                            "them, or another --out folder")
    todo = [(p, t) for p, t in zip(images, targets) if not (args.skip_existing and t.exists())]
    check_dask_args(args)
    prompts = prompts_from_args(args, images) or {}
    config = config_from_args(args)
    items = [(str(p), str(t), prompts.get(p.name)) for p, t in todo]
    results: list = []
    if not args.dask:
        bank, pipeline = pipeline_from_args(args, config)
    out.mkdir(parents=True, exist_ok=True)
    leftovers = remove_stale_temp_files(out, older_than_s=5.0, names={t.name for t in targets})
    if leftovers:
        print(f"removed {len(leftovers)} unfinished mask file(s) an interrupted run left in {out}", file=sys.stderr)
    try:
        if args.dask:
            results, _ = _on_dask(args, config, segment_chunk, items, "segmenting")
        else:
            job = _job(args, config)
            with progress_bar("segmenting") as update:
                for i, (path, target, prompt) in enumerate(items):
                    results.append(segment_one(bank, pipeline, job, path, target, prompt))
                    update(i + 1, len(items))
    except (MatchsegError, OSError):
        # in this process, the results say it; a Dask run returns none when it stops, so look at the files
        written = (sum(r.status == "written" for r in results) if results or not args.dask
                   else sum(t.exists() for _, t in todo))
        print(f"stopped with {written} of {len(todo)} masks written to {out}; they are complete. Run the same "
              "command with --skip-existing to go on from there", file=sys.stderr)
        raise
    written = sum(r.status in ("written", "kept") for r in results)
    skipped = len(images) - len(todo)
    print(f"wrote {written} masks (0/255 PNG, same size as each image) to {out}"
          + (f"; {skipped} already there were kept" if skipped else ""))
    return _report_failures(results, "segmented")


def _job(args, config, threads: int | None = None):
    from ..batch import BatchJob

    return BatchJob(config, str(Path(args.bank).resolve()) if args.bank else None, threshold=args.threshold,
                    overwrite=getattr(args, "overwrite", False), threads=threads)


def _on_dask(args, config, fn, items, what: str) -> tuple[list, dict]:
    """(results, what made them) of ``items`` in chunks on the Dask workers of ``--dask``. The workers build their
    pipelines while this process builds its own and fills the bank's caches (once, for all of them)."""
    if not items:
        return [], {}
    items = [(str(Path(a).resolve()), str(Path(b).resolve()), prompt) for a, b, prompt in items]  # for remote workers
    from ..batch import chunks, default_chunk_size
    from ..dask_batch import dask_client, n_workers, run_chunks, warm_up

    with dask_client(args.dask) as (client, threads):
        job = _job(args, config, threads)
        warm_up(client, job)
        bank, pipeline = pipeline_from_args(args, config)
        with progress_bar("embedding the references") as update:
            pipeline.prepare(bank, update)
        size = args.chunk_size or default_chunk_size(len(items), n_workers(client))
        parts = list(chunks(items, size))
        print(f"{what} {len(items)} images in {len(parts)} chunks on {n_workers(client)} Dask workers "
              f"({client.scheduler.address})", file=sys.stderr)
        with progress_bar(what) as update:
            return run_chunks(client, fn, job, parts, update), pipeline.describe()


def _report_failures(results, what: str) -> int:
    failed = [r for r in results if r.failed]
    for r in failed:
        print(f"error: not {what}: {r.name}: {r.message}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} images could not be {what} (listed above)", file=sys.stderr)
    return 1 if failed else 0


def cmd_eval(args) -> int:
    from ..batch import evaluate_chunk, evaluate_one
    from ..image_io import list_images
    from ..pipeline import summarize

    images = list_images(args.images)
    masks = {p.stem: p for p in list_images(args.masks)}
    pairs = [(p, masks[p.stem]) for p in images if p.stem in masks]
    if not pairs:
        raise InputError(f"no image in {args.images} has a mask with the same stem in {args.masks}")
    csv_path = args.csv or (str(Path(args.json).with_suffix(".csv")) if args.json else None)
    check_output_file(args.json, args.overwrite, "--json")
    check_output_file(csv_path, args.overwrite, "--csv")
    check_dask_args(args)
    clicks = args.max_clicks if args.interactive else 0
    if args.interactive and (args.dask or args.prompts):
        raise InputError("--interactive runs in this process and makes its own clicks: leave out --dask and --prompts")
    if args.interactive and not 1 <= args.max_clicks <= 100:
        raise InputError(f"--max-clicks must be between 1 and 100, got {args.max_clicks}")
    prompts = prompts_from_args(args, [p for p, _ in pairs]) or {}
    config = config_from_args(args)
    items = [(str(p), str(m), prompts.get(p.name)) for p, m in pairs]
    if args.dask:
        results, made_by = _on_dask(args, config, evaluate_chunk, items, "evaluating")
    else:
        bank, pipeline = pipeline_from_args(args, config)
        if clicks:
            from ..interactive_eval import check_interactive

            check_interactive(pipeline)
        made_by = pipeline.describe()
        with progress_bar("evaluating") as update:
            results = []
            for i, item in enumerate(items):
                results.append(evaluate_one(bank, pipeline, *item, max_clicks=clicks))
                update(i + 1, len(items))
    rows = [r.row for r in results if not r.failed]
    if not rows:
        _report_failures(results, "scored")
        raise InputError("no image could be scored (see above)")
    result = {**summarize(rows), **made_by, "rows": rows}
    if clicks:
        from ..interactive_eval import summarize_clicks

        result = {**result, **summarize_clicks(rows), "max_clicks": clicks, "rows": rows}
    print(f"n = {result['n']} (empty ground truth: {result['n_gt_empty']}), k = {args.k}, supports {args.support}")
    for key in ("dice", "iou", "hd95"):
        print(f"{key:>5}: {result[f'{key}_mean']:.4f} +- {result[f'{key}_std']:.4f}")
    if clicks:
        at = ", ".join(f"{n}: {d:.4f}" for n, d in result["dice_at_clicks"].items())
        print(f"NoC@85 {result['noc85_mean']:.2f}, NoC@90 {result['noc90_mean']:.2f} (at most {clicks}); "
              f"Dice after clicks {at}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))
    if csv_path:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(result["rows"][0]))
        w.writeheader()
        w.writerows(result["rows"])
        atomic_write_text(csv_path, buf.getvalue())
        print(f"per-image metrics: {csv_path}")
    return _report_failures(results, "scored")


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
    c.add_argument("--images", required=True, help="folder of images to segment, or a volume (NIfTI file, DICOM "
                                                    "series folder, TIFF stack) or a folder of volumes")
    c.add_argument("--out", required=True, help="folder for the masks (0/255 PNG, one per image, same file stem)")
    c.add_argument("--overwrite", action="store_true", help="replace masks already in --out")
    c.add_argument("--skip-existing", action="store_true",
                   help="keep masks already in --out and segment only the other images (to resume a run)")
    add_proposal_args(c)
    add_dask_args(c)
    c.set_defaults(func=cmd_segment)

    c = sub.add_parser("eval", help="Dice, IoU and HD95 of the proposals against reference masks")
    c.add_argument("--images", required=True, help="folder of images to segment")
    c.add_argument("--masks", required=True, help="folder of their true masks (same file stems)")
    c.add_argument("--json", help="write the summary and per-image rows to this JSON file")
    c.add_argument("--csv", help="per-image CSV (default: beside --json)")
    c.add_argument("--overwrite", action="store_true", help="replace --json and --csv files that exist")
    c.add_argument("--interactive", action="store_true",
                   help="also let a simulated user click where the mask is most wrong, and report NoC@85/90 and "
                        "Dice after 1, 3, 5 clicks (proposers that take clicks: context, litemedsam)")
    c.add_argument("--max-clicks", type=int, default=20, help="--interactive: clicks per image at most")
    add_proposal_args(c)
    add_dask_args(c)
    c.set_defaults(func=cmd_eval)

    from ..proposers import CHECKPOINT

    c = sub.add_parser("demo", help="offline demo on generated sample data with the shipped checkpoint")
    c.add_argument("--out", default="matchseg-demo", help="folder for the bank, the masks and the overlay")
    c.add_argument("-n", type=int, default=9, help="references per sample kind")
    add_option(c, CHECKPOINT)
    add_device_args(c)
    c.set_defaults(func=cmd_demo)
