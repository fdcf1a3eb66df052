"""``matchseg segment | eval | demo | train | finetune``: the commands that run or train a proposer."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from .errors import InputError, MatchsegError, name_list
from .fsutil import atomic_write_text

# sam2_model.SAM2_CONFIGS' names, spelled out so that ``--help`` does not import torch (a test keeps them equal)
SAM2_MODELS = ("sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large")


def add_proposal_args(p) -> None:
    from .cli import _add_retriever_args

    p.add_argument("--bank", required=True, help="reference bank folder")
    p.add_argument("-k", type=int, default=8, help="number of supports (1-32)")
    p.add_argument("--proposer", default="matchseg", choices=("matchseg", "sam2"),
                   help="MatchSeg network, or SAM 2 memory attention (retrieved pairs become memories)")
    p.add_argument("--checkpoint", help="the proposer's checkpoint (default: MatchSeg's shipped one; for sam2 the "
                                        "weights cache, see `matchseg weights where`)")
    p.add_argument("--sam2-model", default="sam2.1_hiera_tiny", choices=SAM2_MODELS,
                   help="SAM 2 size, for --proposer sam2 and --refine sam2")
    p.add_argument("--sam2-image-size", type=int, default=1024,
                   help="SAM 2 input size; the official checkpoints are trained at 1024")
    p.add_argument("--refine", default="none", choices=("none", "sam2"),
                   help="refine each proposal with SAM 2 prompts from its confident pixels (SAM-Match)")
    p.add_argument("--refine-threshold", type=float, default=0.95,
                   help="SAM 2 prompts come from pixels whose probability reaches this")
    p.add_argument("--refine-margin", type=int, default=30, help="box margin in pixels")
    p.add_argument("--sam2-checkpoint", help="SAM 2 checkpoint for --refine (default: the weights cache)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability above which a pixel is foreground")
    p.add_argument("--mirror-tta", action="store_true",
                   help="matchseg: average each image's probabilities with its mirror image's "
                        "(62 -> 96 ms per proposal on a 2-core CPU)")
    p.add_argument("--support", default="retrieved", choices=("retrieved", "random"),
                   help="how supports are chosen (random is the ablation)")
    p.add_argument("--allow-self", action="store_true",
                   help="let a query that is itself in the bank use its own reference as support")
    _add_retriever_args(p)


def _pipeline(args):
    from .bank import ReferenceBank
    from .cli import _retriever
    from .propose import build_proposer

    if not 0.0 < args.threshold < 1.0:
        raise InputError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if not 1 <= args.k <= 32:
        raise InputError(f"-k must be between 1 and 32, got {args.k}")
    bank = ReferenceBank.open(args.bank)
    predictor = build_proposer(args.proposer, args.checkpoint, args.device, args.sam2_model, args.sam2_image_size,
                               mirror_tta=args.mirror_tta)
    args.refiner = None
    if args.refine == "sam2":
        from .samatch import Sam2Refiner

        model = getattr(predictor, "model", None) if args.proposer == "sam2" else None
        args.refiner = Sam2Refiner(args.sam2_model, args.sam2_checkpoint, args.device, args.sam2_image_size,
                                   _model=model)
    return bank, _retriever(args), predictor


def _propose_file(bank, retriever, predictor, path: Path, args, rng):
    from .image_io import read_image
    from .propose import propose

    image = read_image(path)
    exclude = [] if args.allow_self else [i for i in [bank.find_image(image)] if i]
    return image, propose(bank, image, retriever=retriever, predictor=predictor, k=args.k, exclude=exclude,
                          strategy=args.support, rng=rng, refiner=getattr(args, "refiner", None),
                          refine_threshold=getattr(args, "refine_threshold", 0.95),
                          refine_margin=getattr(args, "refine_margin", 30))


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
    from .cli import _progress
    from .image_io import list_images, write_mask

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
    bank, retriever, predictor = _pipeline(args)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    failed: list[str] = []
    written = 0
    update, close = _progress("segmenting")
    try:
        for i, (path, target) in enumerate(todo):
            try:
                _, proposal = _propose_file(bank, retriever, predictor, path, args, rng)
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
    finally:
        close()
    skipped = len(images) - len(todo)
    print(f"wrote {written} masks (0/255 PNG, same size as each image) to {out}"
          + (f"; {skipped} already there were kept" if skipped else ""))
    for line in failed:
        print(f"error: not segmented: {line}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(todo)} images could not be segmented (listed above)", file=sys.stderr)
    return 1 if failed else 0


def check_output_file(path: str | None, overwrite: bool, option: str) -> None:
    """Refuse an output file that cannot be written before any work is done (not after minutes of it)."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{option} {p} is a folder; give a file name")
    if not p.parent.is_dir():
        raise InputError(f"{option} {p}: the folder {p.parent} does not exist; create it first")
    if p.exists() and not overwrite:
        raise InputError(f"{option} {p} already exists; use --overwrite to replace it or choose another name")


def evaluate(bank, retriever, predictor, pairs, args, progress=None) -> dict:
    """Per-image metrics and their summary (the body of ``matchseg eval``)."""
    from .image_io import read_mask
    from .metrics import all_metrics

    rng = np.random.default_rng(0)
    rows = []
    for i, (img_path, mask_path) in enumerate(pairs):
        image, proposal = _propose_file(bank, retriever, predictor, img_path, args, rng)
        gt = read_mask(mask_path, image.shape, allow_full=True)
        m = all_metrics(proposal.mask(args.threshold), gt)
        rows.append({"image": img_path.name, **{k: round(v, 6) for k, v in m.items()},
                     "gt_empty": not gt.any(), "supports": " ".join(s.id for s in proposal.supports),
                     "refinement": proposal.note})
        if progress:
            progress(i + 1, len(pairs))
    summary = {"n": len(rows), "n_gt_empty": sum(r["gt_empty"] for r in rows)}
    for key in ("dice", "iou", "hd95"):
        vals = np.array([r[key] for r in rows], float)
        vals = vals[np.isfinite(vals)]
        summary[f"{key}_mean"] = float(vals.mean()) if len(vals) else float("nan")
        summary[f"{key}_std"] = float(vals.std()) if len(vals) else float("nan")
    summary["n_hd95_undefined"] = int(sum(not np.isfinite(r["hd95"]) for r in rows))
    return {**summary, "k": args.k, "support": args.support, "retriever": retriever.model_id,
            "proposer": predictor.model_id, "mirror_tta": getattr(predictor, "mirror_tta", False),
            "refine": getattr(args, "refine", "none"), "rows": rows}


def cmd_eval(args) -> int:
    from .cli import _progress
    from .image_io import list_images

    images = list_images(args.images)
    masks = {p.stem: p for p in list_images(args.masks)}
    pairs = [(p, masks[p.stem]) for p in images if p.stem in masks]
    if not pairs:
        raise InputError(f"no image in {args.images} has a mask with the same stem in {args.masks}")
    csv_path = args.csv or (str(Path(args.json).with_suffix(".csv")) if args.json else None)
    check_output_file(args.json, args.overwrite, "--json")
    check_output_file(csv_path, args.overwrite, "--csv")
    bank, retriever, predictor = _pipeline(args)
    update, close = _progress("evaluating")
    try:
        result = evaluate(bank, retriever, predictor, pairs, args, update)
    finally:
        close()
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

    from .image_io import to_float_rgb

    rgb = (to_float_rgb(image) * 255).astype(np.uint8)
    for mask, colour in ((gt, (40, 220, 40)), (pred, (240, 40, 40))):
        if mask is not None:
            edge = mask & ~ndi.binary_erosion(mask, iterations=1)
            edge = ndi.binary_dilation(edge, iterations=1)
            rgb[edge] = colour
    return rgb


def cmd_demo(args) -> int:
    from PIL import Image

    from .bank import ReferenceBank
    from .image_io import write_mask
    from .metrics import dice
    from .predictor import MatchSegPredictor
    from .propose import propose
    from .retrieval import get_retriever
    from .sample_data import KINDS, make_sample

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
    predictor = MatchSegPredictor(args.checkpoint, device=args.device)
    retriever = get_retriever("handcrafted")
    tiles, lines = [], []
    for name, img, gt in held:
        p = propose(bank, img, retriever=retriever, predictor=predictor, k=min(8, len(bank)))
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


def cmd_train(args) -> int:
    from .modeling import MatchSegConfig
    from .training.train import TrainConfig, train

    model = MatchSegConfig(image_size=args.image_size).to_dict()
    cfg = TrainConfig(data_root=args.data, out_dir=args.out, datasets=tuple(args.datasets), steps=args.steps,
                      batch_size=args.batch_size, k_min=args.k_min, k_max=args.k_max, lr=args.lr,
                      synthetic_fraction=args.synthetic_fraction, val_every=args.val_every, seed=args.seed,
                      retriever=args.retriever, model=model, init_checkpoint=args.init, interaction=args.interaction,
                      threads=args.threads, device=args.device)
    from .cli import _progress

    update, close = _progress("training")
    try:
        result = train(cfg, progress=lambda s, t, info: update(s, t),
                       log=lambda msg: print(msg, file=sys.stderr))
    finally:
        close()
    if args.export:
        from .checkpoint import build_matchseg, save_checkpoint

        model, meta = build_matchseg(result["best_checkpoint"])
        save_checkpoint(args.export, model, meta, half=True)
        print(f"exported fp16 checkpoint: {args.export}")
    print(json.dumps({k: v for k, v in result.items()}, indent=1))
    return 0


def cmd_finetune(args) -> int:
    from .bank import ReferenceBank
    from .cli import _progress
    from .training.finetune import finetune

    bank = ReferenceBank.open(args.bank)
    update, close = _progress("fine-tuning")
    try:
        out = finetune(bank, args.out, base=args.checkpoint, steps=args.steps, lr=args.lr, k_max=args.k_max,
                       retriever=args.retriever, seed=args.seed, overwrite=args.overwrite, device=args.device,
                       threads=args.threads,
                       progress=lambda s, t, i: update(s, t), log=lambda msg: print(msg, file=sys.stderr))
    finally:
        close()
    print(f"fine-tuned checkpoint: {out} (use it with --checkpoint {out})")
    return 0


def cmd_semi(args) -> int:
    from .bank import ReferenceBank
    from .cli import _progress
    from .training.semi import SemiConfig, default_run_dir, read_unlabelled_folder, run_semi

    bank = ReferenceBank.open(args.bank)
    cfg = SemiConfig(warmup_steps=args.warmup_steps, rounds=args.rounds, steps_per_round=args.steps, lr=args.lr,
                     confidence=args.confidence, keep_fraction=args.keep_fraction, select=args.select, k=args.k,
                     refine=args.refine, refine_threshold=args.refine_threshold, refine_margin=args.refine_margin,
                     sam2_model=args.sam2_model, sam2_checkpoint=args.sam2_checkpoint,
                     sam2_image_size=args.sam2_image_size, teacher=args.teacher, ema_decay=args.ema_decay,
                     cutmix=args.cutmix, device=args.device, seed=args.seed)
    cfg.check()
    unlabelled = read_unlabelled_folder(args.unlabelled)
    run = Path(args.out) if args.out else default_run_dir(bank)
    update, close = _progress("semi-supervised")
    try:
        out = run_semi(bank, unlabelled, run, base=args.checkpoint, cfg=cfg, progress=lambda d, t, s: update(d, t),
                       log=lambda msg: print(msg, file=sys.stderr), threads=args.threads)
    finally:
        close()
    print(f"pseudo-labels (not references, never in the bank): {run / 'pseudo'}")
    print(f"fine-tuned checkpoint: {out} (use it with --checkpoint {out})")
    return 0


def register(sub) -> None:
    from .cli import add_device_args

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

    c = sub.add_parser("demo", help="offline demo on generated sample data with the shipped checkpoint")
    c.add_argument("--out", default="matchseg-demo", help="folder for the bank, the masks and the overlay")
    c.add_argument("-n", type=int, default=9, help="references per sample kind")
    c.add_argument("--checkpoint", help="MatchSeg checkpoint (default: the shipped one)")
    add_device_args(c)
    c.set_defaults(func=cmd_demo)

    c = sub.add_parser("train", help="episodic training of MatchSeg on datasets in the shared layout")
    c.add_argument("--data", required=True, help="folder with <dataset>/images, masks, manifest.csv")
    c.add_argument("--out", required=True, help="run folder (resumes if it holds last.pt)")
    c.add_argument("--datasets", nargs="+", default=["busi", "kvasir", "wbc"], help="datasets under --data")
    c.add_argument("--steps", type=int, default=6000, help="training steps")
    c.add_argument("--batch-size", type=int, default=8, help="episodes per step")
    c.add_argument("--k-min", type=int, default=1, help="fewest supports per episode")
    c.add_argument("--k-max", type=int, default=8, help="most supports per episode")
    c.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (warm-up, then cosine decay)")
    c.add_argument("--synthetic-fraction", type=float, default=0.15,
                   help="share of episodes that are generated tasks (keeps the model using its supports)")
    c.add_argument("--val-every", type=int, default=500, help="steps between validations (best.safetensors)")
    c.add_argument("--seed", type=int, default=0, help="random seed")
    c.add_argument("--interaction", choices=("joint_attention", "crossconv", "none"),
                   help="default joint_attention; with --init, the checkpoint's (a support-free one can be "
                        "given an interaction: its U-Net weights are kept)")
    c.add_argument("--image-size", type=int, default=128, help="working size the images are resized to")
    c.add_argument("--retriever", default="handcrafted", choices=("handcrafted",),
                   help="how episodes' supports are retrieved")
    c.add_argument("--init", help="start from this checkpoint ('default' = the shipped one)")
    add_device_args(c, threads=True)
    c.add_argument("--export", help="also write the best checkpoint in fp16 here")
    c.set_defaults(func=cmd_train)

    c = sub.add_parser("finetune", help="adapt a checkpoint to a bank (minutes on a CPU)")
    c.add_argument("bank", help="bank folder (its references are the training data)")
    c.add_argument("--out", required=True, help="the fine-tuned checkpoint file to write")
    c.add_argument("--checkpoint", help="start from this checkpoint (default: the shipped one)")
    c.add_argument("--steps", type=int, default=300, help="training steps")
    c.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    c.add_argument("--k-max", type=int, default=8, help="most supports per episode")
    c.add_argument("--retriever", default="handcrafted", choices=("handcrafted",),
                   help="how episodes' supports are retrieved")
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_device_args(c, threads=True)
    c.add_argument("--seed", type=int, default=0, help="random seed")
    c.set_defaults(func=cmd_finetune)

    c = sub.add_parser("semi", help="learn from unlabelled images: pseudo-labels (optionally SAM 2 refined) "
                                    "fine-tune MatchSeg; resumable")
    c.add_argument("--bank", required=True, help="the labelled references")
    c.add_argument("--unlabelled", required=True, help="folder of unlabelled images")
    c.add_argument("--refine", default="none", choices=("none", "sam2"),
                   help="turn confident pixels into SAM 2 prompts (SAM-Match); without SAM 2 weights the "
                        "confident prediction itself is used")
    c.add_argument("--warmup-steps", type=int, default=600,
                   help="fine-tune on the labelled bank alone first, so the first pseudo-labels come from a model "
                        "that knows the bank's domain; 0 = start pseudo-labelling at once")
    c.add_argument("--rounds", type=int, default=2,
                   help="pseudo-label / fine-tune rounds; more than a finished run in --out had adds rounds to it")
    c.add_argument("--steps", type=int, default=300, help="training steps per round")
    c.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    c.add_argument("--confidence", type=float, default=0.9,
                   help="a pixel counts when max(p, 1 - p) reaches this")
    c.add_argument("--keep-fraction", type=float, default=0.5,
                   help="train on this fraction of the pseudo-labels, the most reliable first")
    c.add_argument("--select", default="agreement", choices=("agreement", "confidence"),
                   help="how reliability is scored: agreement between the image's and its mirror image's masks, or "
                        "the mean confidence over the pixels predicted foreground")
    c.add_argument("-k", type=int, default=8, help="supports when pseudo-labelling")
    c.add_argument("--teacher", default="auto", choices=("auto", "round", "ema"),
                   help="targets of the unlabelled views: a mean teacher's prediction at every step (ema), or the "
                        "round's stored pseudo-labels (round); auto = ema, or round with --refine sam2")
    c.add_argument("--ema-decay", type=float, default=0.99, help="the mean teacher's decay per step")
    c.add_argument("--cutmix", type=float, default=0.0,
                   help="probability that a strongly augmented unlabelled view gets a box of another one pasted "
                        "in, with its pseudo-label (CutMix); 0 = off")
    c.add_argument("--checkpoint", help="start from this MatchSeg checkpoint (default: the shipped one)")
    c.add_argument("--out", help="run folder (default: <bank>.semi beside the bank); resumes if it holds a run")
    c.add_argument("--refine-threshold", type=float, default=0.95, help="SAM 2 prompts from pixels above this")
    c.add_argument("--refine-margin", type=int, default=30, help="SAM 2 box prompt margin in pixels")
    c.add_argument("--sam2-model", default="sam2.1_hiera_tiny", choices=SAM2_MODELS,
                   help="SAM 2 size for --refine sam2")
    c.add_argument("--sam2-checkpoint", help="SAM 2 checkpoint (default: the weights cache)")
    c.add_argument("--sam2-image-size", type=int, default=1024,
                   help="SAM 2 input size; the official checkpoints are trained at 1024")
    add_device_args(c, threads=True)
    c.add_argument("--seed", type=int, default=0, help="random seed (augmentation, episode order)")
    c.set_defaults(func=cmd_semi)
