"""Does the semi-supervised loop beat labelled-only fine-tuning over several draws of the labelled images?

    .venv/bin/python benchmarks/semi_subsets.py --dataset busi \
        --runs runs/semi-long runs/semi-seed1 runs/semi-seed2 [--split test val] [--threads N] [--json out.json]

Each ``--runs`` folder is the ``--work`` of one ``bench_semi.py`` run (one ``--seed``: one draw of the labelled
images). Its checkpoints (b) ``finetuned``, (b2) ``finetuned-2x``, (c2) ``semi-after-ft`` (round teacher) and
(c3) ``semi-ema-after-ft`` (mean teacher) and (d) ``semi-litemedsam`` (round teacher, LiteMedSAM-refined
pseudo-labels), where present, segment the split with that draw's bank, scored as in
``bench_semi.py``. For each comparison it reports each draw's paired difference with its 95 % interval over the
images (as ``paired_dice.py``) and the mean over the draws. The test images are the same for every draw, so the
mean's interval resamples the images once for all draws: it is the test-image noise of that mean, given these
draws; how far the draws spread (min, max) is the other half of the uncertainty, and with few draws the larger.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402
from bench_semi import D_FOLDER, FINETUNED, LOOP_FOLDERS, test_pairs  # noqa: E402
from paired_dice import image_dice, paired_interval, parse_scoring_args, scoring_parser  # noqa: E402

from napari_matchseg.bank import ReferenceBank  # noqa: E402
from napari_matchseg.training.semi import FINAL_NAME  # noqa: E402

CHECKPOINTS = {**FINETUNED, "c2": f"{LOOP_FOLDERS['c2']}/{FINAL_NAME}", "c3": f"{LOOP_FOLDERS['c3']}/{FINAL_NAME}",
               "d": f"{D_FOLDER}/{FINAL_NAME}"}
COMPARISONS = (("b", "c2"), ("b", "c3"), ("b2", "c2"), ("b2", "c3"), ("c2", "c3"), ("b", "b2"), ("b", "d"),
               ("c3", "d"), ("c2", "d"))


def subset_means(diffs: list[np.ndarray], draws: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean over draws of the mean per-image difference, and its 95 % interval (the same images resampled for
    every draw: the test split is shared)."""
    d = np.stack(diffs)  # (draws of the labelled images, images)
    idx = np.random.default_rng(seed).integers(0, d.shape[1], size=(draws, d.shape[1]))
    means = d[:, idx].mean(axis=2).mean(axis=0)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    ap = scoring_parser()
    ap.add_argument("--runs", nargs="+", required=True, help="bench_semi.py --work folders, one per --seed")
    args = parse_scoring_args(ap)
    data, name = Path(args.data), args.dataset
    folders = [Path(r) / name for r in args.runs]
    for f in folders:
        if not (f / "bank").is_dir():
            raise SystemExit(f"{f} has no bank: is it the --work of a bench_semi.py run of {name}?")
    out = {"machine": machine(), "dataset": name, "runs": args.runs, "splits": {}}
    for split in args.split:
        pairs = test_pairs(data, name, split)
        dice: list[dict[str, np.ndarray]] = []  # per run: row -> per-image Dice
        for f in folders:
            bank, scores = ReferenceBank.open(f / "bank"), {}
            for row, rel in CHECKPOINTS.items():
                if (f / rel).is_file():
                    scores[row] = image_dice(bank, f / rel, pairs, args.device)
            dice.append(scores)
        result = {"n": len(pairs), "dice": {run: {k: round(float(v.mean()), 4) for k, v in s.items()}
                                            for run, s in zip(args.runs, dice)},
                  "comparisons": []}
        for a, b in COMPARISONS:
            have = [(run, s) for run, s in zip(args.runs, dice) if a in s and b in s]
            if not have:
                continue
            per_run = [paired_interval(s[a], s[b]) for _, s in have]
            mean, lo, hi = subset_means([s[b] - s[a] for _, s in have])
            result["comparisons"].append({
                "b_minus_a": f"{b} - {a}", "runs": [run for run, _ in have],
                "per_run": [{"mean": round(m, 4), "ci95": [round(lo_, 4), round(hi_, 4)]} for m, lo_, hi_ in per_run],
                "mean": round(mean, 4), "ci95_images": [round(lo, 4), round(hi, 4)],
                "min": round(min(m for m, _, _ in per_run), 4), "max": round(max(m for m, _, _ in per_run), 4)})
            cells = "  ".join(f"{Path(run).name} {m:+.3f} [{lo_:+.3f}, {hi_:+.3f}]"
                              for (run, _), (m, lo_, hi_) in zip(have, per_run))
            print(f"{name} {split:4s} {b:>2s} - {a:2s}: {cells}  |  mean over {len(have)} "
                  f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]", flush=True)
        out["splits"][split] = result
    print(f"machine: {out['machine']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
