"""Which score finds the good pseudo-labels, and how right are the confident pixels? (no training: minutes)

    .venv/bin/python benchmarks/pseudo_label_scores.py --dataset kvasir --run runs/semi-seed3/kvasir/semi-ema-after-ft \
        [--round 0] [--keep 0.5 0.3] [--thresholds 0.9 0.95 0.98] [--threads N] [--json out.json]

``--run`` is a ``run_semi`` folder on dataset images (``bench_semi.py`` makes them; the images keep their dataset
ids as names). Every image of the round's pseudo-labels is predicted again by the checkpoint that made it, with
the supports it had (both recorded in ``labels.jsonl``), on the weak view (the image and its mirror image), and
compared with the dataset's mask. For each reliability score of ``SemiConfig.select`` it prints the Spearman
correlation with the true Dice and the mean true Dice of the pseudo-labels it would keep; then, on the half that
the agreement score keeps, how often confident pixels (``max(p, 1 - p) >= t``) are right, foreground and
background apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402
from paired_dice import parse_scoring_args, scoring_parser  # noqa: E402

from napari_matchseg.bank import ReferenceBank  # noqa: E402
from napari_matchseg.errors import name_list  # noqa: E402
from napari_matchseg.image_io import read_image, read_mask  # noqa: E402
from napari_matchseg.metrics import dice  # noqa: E402
from napari_matchseg.proposers.matchseg import MatchSegPredictor  # noqa: E402
from napari_matchseg.pseudo_labels import PseudoLabelStore  # noqa: E402
from napari_matchseg.training.semi import agreement, foreground_confidence  # noqa: E402

SCORES = {"agreement": lambda p, p_m: agreement(p >= 0.5, p_m >= 0.5),
          "confidence": lambda p, p_m: foreground_confidence(0.5 * (p + p_m))}


def predict_again(run: Path, round_: int, data: Path, dataset: str, device: str):
    """Per pseudo-labelled image: (name, p, p_mirror, truth), predicted as the round predicted it."""
    store = PseudoLabelStore(run / "pseudo" / f"round-{round_}")
    if not len(store):
        raise SystemExit(f"{store.folder} holds no pseudo-labels")
    records = store.records()
    masks = data / dataset / "masks"
    absent = [r["name"] for r in records if not (masks / f"{r['name']}.png").is_file()]
    if absent:  # a run on the user's own images, or on another dataset's: there is no truth to score against
        raise SystemExit(f"{run} was not made on {dataset} images: {len(absent)} of its {len(records)} pseudo-labels "
                         f"have no mask in {masks} ({name_list(absent)}); --run takes a bench_semi.py run folder "
                         "of the same --dataset")
    bank = ReferenceBank.open(json.loads((run / "config.json").read_text())["bank"])
    predictors: dict[str, MatchSegPredictor] = {}
    references: dict[str, tuple] = {}  # each support read once, not once per image it supports
    for rec in records:
        ckpt = rec["checkpoint"]
        if ckpt not in predictors:
            predictors[ckpt] = MatchSegPredictor(None if ckpt == "default" else ckpt, device=device)
        image = read_image(data / dataset / "images" / f"{rec['name']}.png")
        truth = read_mask(masks / f"{rec['name']}.png", image.shape)
        for i in rec["supports"]:
            if i not in references:
                references[i] = (bank.load_image(i), bank.load_mask(i))
        supports = [references[i] for i in rec["supports"]]
        [(p, p_m)] = predictors[ckpt].predict_with_mirror([image], [([s[0] for s in supports],
                                                                     [s[1] for s in supports])])
        yield rec["name"], p, p_m, truth


def main() -> None:
    ap = scoring_parser(splits=False)
    ap.add_argument("--run", required=True, help="run_semi folder (on dataset images)")
    ap.add_argument("--round", type=int, default=0, help="whose pseudo-labels (0 = the first round's)")
    ap.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.3], help="fractions kept, best first")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.95, 0.98])
    args = parse_scoring_args(ap)
    true_dice, scores, probs, truths = [], {s: [] for s in SCORES}, [], []
    for _, p, p_m, truth in predict_again(Path(args.run), args.round, Path(args.data), args.dataset, args.device):
        prob = 0.5 * (p + p_m)
        true_dice.append(dice(prob >= 0.5, truth))
        for name, score in SCORES.items():
            scores[name].append(score(p, p_m))
        probs.append(prob.astype(np.float16)), truths.append(truth)
    true_dice = np.array(true_dice)
    report = {"machine": machine(), "dataset": args.dataset, "run": args.run, "round": args.round,
              "images": len(true_dice), "dice_vs_truth": round(float(true_dice.mean()), 4), "scores": {},
              "confident_pixels": {}}
    print(f"{args.dataset}, round {args.round}: {len(true_dice)} pseudo-labels, Dice vs truth {true_dice.mean():.4f}")
    for name, values in scores.items():
        order = np.argsort(-np.array(values), kind="stable")
        kept = {str(f): round(float(true_dice[order[:max(1, round(f * len(order)))]].mean()), 4) for f in args.keep}
        rho = float(spearmanr(values, true_dice)[0])
        report["scores"][name] = {"spearman": round(rho, 4), "kept_dice": kept}
        print(f"  {name:10s} Spearman {rho:.3f}; kept Dice " + ", ".join(f"{f}: {d:.4f}" for f, d in kept.items()))
    half = np.argsort(-np.array(scores["agreement"]), kind="stable")[:max(1, round(0.5 * len(true_dice)))]
    for t in args.thresholds:
        fg_right, bg_right, share = [], [], []
        for i in half:
            prob, truth = probs[i].astype(np.float32), truths[i]
            fg, bg = prob >= t, prob <= 1 - t
            share.append(float((fg | bg).mean()))
            if fg.any():
                fg_right.append(float(truth[fg].mean()))
            if bg.any():
                bg_right.append(float((~truth[bg]).mean()))
        cell = {"share": round(float(np.mean(share)), 4), "foreground_right": round(float(np.mean(fg_right)), 4),
                "background_right": round(float(np.mean(bg_right)), 4)}
        report["confident_pixels"][str(t)] = cell
        print(f"  confident at {t}: {cell['share']:.3f} of the pixels; right: foreground {cell['foreground_right']:.3f}"
              f", background {cell['background_right']:.3f} (the agreement-kept half, mean per image)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"machine: {report['machine']}")


if __name__ == "__main__":
    main()
