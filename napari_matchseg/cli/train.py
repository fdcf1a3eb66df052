"""``matchseg train | finetune | semi``: train MatchSeg on datasets, adapt it to a bank, learn from unlabelled data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import add_device_args, add_registry_options, dataclass_default, progress_bar


def cmd_train(args) -> int:
    from ..modeling import MatchSegConfig
    from ..training.train import TrainConfig, train

    model = MatchSegConfig(image_size=args.image_size).to_dict()
    cfg = TrainConfig(data_root=args.data, out_dir=args.out, datasets=tuple(args.datasets), steps=args.steps,
                      batch_size=args.batch_size, k_min=args.k_min, k_max=args.k_max, lr=args.lr,
                      synthetic_fraction=args.synthetic_fraction, val_every=args.val_every, seed=args.seed,
                      retriever=args.retriever, model=model, init_checkpoint=args.init, interaction=args.interaction,
                      threads=args.threads, device=args.device)
    update, close = progress_bar("training")
    try:
        result = train(cfg, progress=lambda s, t, info: update(s, t),
                       log=lambda msg: print(msg, file=sys.stderr))
    finally:
        close()
    if args.export:
        from ..checkpoint import build_matchseg, save_checkpoint

        model, meta = build_matchseg(result["best_checkpoint"])
        save_checkpoint(args.export, model, meta, half=True)
        print(f"exported fp16 checkpoint: {args.export}")
    print(json.dumps({k: v for k, v in result.items()}, indent=1))
    return 0


def cmd_finetune(args) -> int:
    from ..bank import ReferenceBank
    from ..training.finetune import finetune

    bank = ReferenceBank.open(args.bank)
    update, close = progress_bar("fine-tuning")
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
    from ..bank import ReferenceBank
    from ..training.semi import SemiConfig, default_run_dir, read_unlabelled_folder, run_semi

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
    update, close = progress_bar("semi-supervised")
    try:
        out = run_semi(bank, unlabelled, run, base=args.checkpoint, cfg=cfg, progress=lambda d, t, s: update(d, t),
                       log=lambda msg: print(msg, file=sys.stderr), threads=args.threads)
    finally:
        close()
    print(f"pseudo-labels (not references, never in the bank): {run / 'pseudo'}")
    print(f"fine-tuned checkpoint: {out} (use it with --checkpoint {out})")
    return 0


def register(sub) -> None:
    from ..refiners import REFINERS, refiner_choices
    from ..training.config import TrainConfig
    from ..training.semi import SemiConfig

    c = sub.add_parser("train", help="episodic training of MatchSeg on datasets in the shared layout")
    c.add_argument("--data", required=True, help="folder with <dataset>/images, masks, manifest.csv")
    c.add_argument("--out", required=True, help="run folder (resumes if it holds last.pt)")
    c.add_argument("--datasets", nargs="+", default=list(dataclass_default(TrainConfig, "datasets")),
                   help="datasets under --data")
    c.add_argument("--steps", type=int, default=dataclass_default(TrainConfig, "steps"), help="training steps")
    c.add_argument("--batch-size", type=int, default=dataclass_default(TrainConfig, "batch_size"),
                   help="episodes per step")
    c.add_argument("--k-min", type=int, default=dataclass_default(TrainConfig, "k_min"),
                   help="fewest supports per episode")
    c.add_argument("--k-max", type=int, default=dataclass_default(TrainConfig, "k_max"),
                   help="most supports per episode")
    c.add_argument("--lr", type=float, default=dataclass_default(TrainConfig, "lr"),
                   help="peak learning rate (warm-up, then cosine decay)")
    c.add_argument("--synthetic-fraction", type=float, default=dataclass_default(TrainConfig, "synthetic_fraction"),
                   help="share of episodes that are generated tasks (keeps the model using its supports)")
    c.add_argument("--val-every", type=int, default=dataclass_default(TrainConfig, "val_every"),
                   help="steps between validations (best.safetensors)")
    c.add_argument("--seed", type=int, default=dataclass_default(TrainConfig, "seed"), help="random seed")
    c.add_argument("--interaction", choices=("joint_attention", "crossconv", "none"),
                   help="default joint_attention; with --init, the checkpoint's (a support-free one can be "
                        "given an interaction: its U-Net weights are kept)")
    c.add_argument("--image-size", type=int, default=128, help="working size the images are resized to")
    c.add_argument("--retriever", default=dataclass_default(TrainConfig, "retriever"), choices=("handcrafted",),
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
    c.add_argument("--refine", default=dataclass_default(SemiConfig, "refine"), choices=refiner_choices(),
                   help="turn confident pixels into prompts for a SAM-style model (SAM-Match); without its weights "
                        "the confident prediction itself is used")
    c.add_argument("--warmup-steps", type=int, default=dataclass_default(SemiConfig, "warmup_steps"),
                   help="fine-tune on the labelled bank alone first, so the first pseudo-labels come from a model "
                        "that knows the bank's domain; 0 = start pseudo-labelling at once")
    c.add_argument("--rounds", type=int, default=dataclass_default(SemiConfig, "rounds"),
                   help="pseudo-label / fine-tune rounds; more than a finished run in --out had adds rounds to it")
    c.add_argument("--steps", type=int, default=dataclass_default(SemiConfig, "steps_per_round"),
                   help="training steps per round")
    c.add_argument("--lr", type=float, default=dataclass_default(SemiConfig, "lr"), help="peak learning rate")
    c.add_argument("--confidence", type=float, default=dataclass_default(SemiConfig, "confidence"),
                   help="a pixel counts when max(p, 1 - p) reaches this")
    c.add_argument("--keep-fraction", type=float, default=dataclass_default(SemiConfig, "keep_fraction"),
                   help="train on this fraction of the pseudo-labels, the most reliable first")
    c.add_argument("--select", default=dataclass_default(SemiConfig, "select"), choices=("agreement", "confidence"),
                   help="how reliability is scored: agreement between the image's and its mirror image's masks, or "
                        "the mean confidence over the pixels predicted foreground")
    c.add_argument("-k", type=int, default=dataclass_default(SemiConfig, "k"), help="supports when pseudo-labelling")
    c.add_argument("--teacher", default=dataclass_default(SemiConfig, "teacher"), choices=("auto", "round", "ema"),
                   help="targets of the unlabelled views: a mean teacher's prediction at every step (ema), or the "
                        "round's stored pseudo-labels (round); auto = ema, or round with --refine sam2")
    c.add_argument("--ema-decay", type=float, default=dataclass_default(SemiConfig, "ema_decay"),
                   help="the mean teacher's decay per step")
    c.add_argument("--cutmix", type=float, default=dataclass_default(SemiConfig, "cutmix"),
                   help="probability that a strongly augmented unlabelled view gets a box of another one pasted "
                        "in, with its pseudo-label (CutMix); 0 = off")
    c.add_argument("--checkpoint", help="start from this MatchSeg checkpoint (default: the shipped one)")
    c.add_argument("--out", help="run folder (default: <bank>.semi beside the bank); resumes if it holds a run")
    c.add_argument("--refine-threshold", type=float, default=dataclass_default(SemiConfig, "refine_threshold"),
                   help="SAM 2 prompts from pixels above this")
    c.add_argument("--refine-margin", type=int, default=dataclass_default(SemiConfig, "refine_margin"),
                   help="SAM 2 box prompt margin in pixels")
    add_registry_options(c, REFINERS)
    add_device_args(c, threads=True)
    c.add_argument("--seed", type=int, default=dataclass_default(SemiConfig, "seed"),
                   help="random seed (augmentation, episode order)")
    c.set_defaults(func=cmd_semi)
