"""``matchseg train | finetune | semi``: train MatchSeg on datasets, adapt it to a bank, learn from unlabelled data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import add_device_args, add_fields, add_registry_options, dataclass_default, progress_bar


def cmd_train(args) -> int:
    from ..modeling import MatchSegConfig
    from ..training.train import TrainConfig, train

    model = MatchSegConfig(image_size=args.image_size).to_dict()
    cfg = TrainConfig(data_root=args.data, out_dir=args.out, datasets=tuple(args.datasets), steps=args.steps,
                      batch_size=args.batch_size, k_min=args.k_min, k_max=args.k_max, lr=args.lr,
                      synthetic_fraction=args.synthetic_fraction, val_every=args.val_every, seed=args.seed,
                      retriever=args.retriever, model=model, init_checkpoint=args.init, interaction=args.interaction,
                      threads=args.threads, device=args.device)
    with progress_bar("training") as update:
        result = train(cfg, progress=lambda s, t, info: update(s, t),
                       log=lambda msg: print(msg, file=sys.stderr))
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
    with progress_bar("fine-tuning") as update:
        out = finetune(bank, args.out, base=args.checkpoint, steps=args.steps, lr=args.lr, k_max=args.k_max,
                       retriever=args.retriever, seed=args.seed, overwrite=args.overwrite, device=args.device,
                       threads=args.threads,
                       progress=lambda s, t, i: update(s, t), log=lambda msg: print(msg, file=sys.stderr))
    print(f"fine-tuned checkpoint: {out} (use it with --checkpoint {out})")
    return 0


def cmd_semi(args) -> int:
    from ..bank import ReferenceBank
    from ..training.semi import SemiConfig, default_run_dir, read_unlabelled_folder, run_semi

    bank = ReferenceBank.open(args.bank)
    fields = {name: getattr(args, SEMI_FLAGS.get(name, name)) for name in SEMI_HELP}  # the options add_fields made
    cfg = SemiConfig(**fields, refine=args.refine, sam2_model=args.sam2_model, sam2_checkpoint=args.sam2_checkpoint,
                     sam2_image_size=args.sam2_image_size, device=args.device)
    cfg.check()
    unlabelled = read_unlabelled_folder(args.unlabelled)
    run = Path(args.out) if args.out else default_run_dir(bank)
    with progress_bar("semi-supervised") as update:
        out = run_semi(bank, unlabelled, run, base=args.checkpoint, cfg=cfg, progress=lambda d, t, s: update(d, t),
                       log=lambda msg: print(msg, file=sys.stderr), threads=args.threads, features_dir=args.embeddings)
    print(f"pseudo-labels (not references, never in the bank): {run / 'pseudo'}")
    print(f"fine-tuned checkpoint: {out} (use it with --checkpoint {out})")
    return 0


TRAIN_HELP = {
    "datasets": "datasets under --data",
    "steps": "training steps",
    "batch_size": "episodes per step",
    "k_min": "fewest supports per episode",
    "k_max": "most supports per episode",
    "lr": "peak learning rate (warm-up, then cosine decay)",
    "synthetic_fraction": "share of episodes that are generated tasks (keeps the model using its supports)",
    "val_every": "steps between validations (best.safetensors)",
    "seed": "random seed",
    "retriever": "how episodes' supports are retrieved",
}
SEMI_HELP = {
    "warmup_steps": "fine-tune on the labelled bank alone first, so the first pseudo-labels come from a model that "
                    "knows the bank's domain; 0 = start pseudo-labelling at once",
    "rounds": "pseudo-label / fine-tune rounds; more than a finished run in --out had adds rounds to it",
    "steps_per_round": "training steps per round",
    "lr": "peak learning rate",
    "confidence": "a pixel counts when max(p, 1 - p) reaches this",
    "keep_fraction": "train on this fraction of the pseudo-labels, the most reliable first",
    "select": "how reliability is scored: agreement between the image's and its mirror image's masks, or the mean "
              "confidence over the pixels predicted foreground",
    "k": "supports when pseudo-labelling",
    "teacher": "targets of the unlabelled views: a mean teacher's prediction at every step (ema), or the round's "
               "stored pseudo-labels (round); auto = ema, or round with --refine",
    "ema_decay": "the mean teacher's decay per step",
    "cutmix": "probability that a strongly augmented unlabelled view gets a box of another one pasted in, with its "
              "pseudo-label (CutMix); 0 = off",
    "refine_threshold": "refinement prompts come from pixels whose probability reaches this",
    "refine_margin": "box prompt margin in pixels",
    "seed": "random seed (augmentation, episode order)",
}

SEMI_FLAGS = {"steps_per_round": "steps"}  # a field whose option has another name (its dest)


def register(sub) -> None:
    from ..refiners import REFINERS, refiner_choices
    from ..training.config import TrainConfig
    from ..training.semi import SELECT_SCORES, SemiConfig

    c = sub.add_parser("train", help="episodic training of MatchSeg on datasets in the shared layout")
    c.add_argument("--data", required=True, help="folder with <dataset>/images, masks, manifest.csv")
    c.add_argument("--out", required=True, help="run folder (resumes if it holds last.pt)")
    add_fields(c, TrainConfig, TRAIN_HELP, choices={"retriever": ("handcrafted",)})
    c.add_argument("--interaction", choices=("joint_attention", "crossconv", "none"),
                   help="default joint_attention; with --init, the checkpoint's (a support-free one can be "
                        "given an interaction: its U-Net weights are kept)")
    c.add_argument("--image-size", type=int, default=128, help="working size the images are resized to")
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
    c.add_argument("--seed", type=int, default=0, help="random seed")
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_device_args(c, threads=True)
    c.set_defaults(func=cmd_finetune)

    c = sub.add_parser("semi", help="learn from unlabelled images: pseudo-labels (optionally SAM 2 refined) "
                                    "fine-tune MatchSeg; resumable")
    c.add_argument("--bank", required=True, help="the labelled references")
    c.add_argument("--unlabelled", required=True, help="folder of unlabelled images")
    c.add_argument("--refine", default=dataclass_default(SemiConfig, "refine"), choices=refiner_choices(),
                   help="turn confident pixels into prompts for a SAM-style model (SAM-Match); without its weights "
                        "the confident prediction itself is used")
    add_fields(c, SemiConfig, SEMI_HELP, flags={name: f"--{dest}" for name, dest in SEMI_FLAGS.items()} | {"k": "-k"},
               choices={"select": tuple(SELECT_SCORES), "teacher": ("auto", "round", "ema")})
    c.add_argument("--checkpoint", help="start from this MatchSeg checkpoint (default: the shipped one)")
    c.add_argument("--out", help="run folder (default: <bank>.semi beside the bank); resumes if it holds a run")
    c.add_argument("--embeddings", help="folder where the refiner keeps its image embeddings, shared between runs "
                                        "on the same images (default: the run folder)")
    add_registry_options(c, REFINERS)
    add_device_args(c, threads=True)
    c.set_defaults(func=cmd_semi)
