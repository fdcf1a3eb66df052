"""Does the semi-supervised loop's gain grow with its rounds, and faster than labelled-only steps do?

    .venv/bin/python benchmarks/semi_rounds.py --dataset kvasir --bank runs/semi-seed3/kvasir/bank \
        --baseline runs/semi-seed3/kvasir/finetuned.safetensors --run runs/semi-seed3/kvasir/semi-ema-after-ft \
        [--control b6=runs/semi-seed3/kvasir/finetuned-2x.safetensors] [--truth] [--split test val] [--threads N] \
        [--json out.json]

``--run`` is a ``run_semi`` folder (``matchseg semi --out``, or a ``bench_semi.py`` loop folder); each of its
``round-<r>.safetensors`` (the model after r + 1 rounds) segments the split with ``--bank`` as supports, scored as
in ``bench_semi.py``, and is compared image by image with ``--baseline`` (the loop's start, row (b)) and with each
``--control`` (e.g. labelled-only fine-tuning for as many steps as the rounds took), with 95 % intervals over
the images as in ``paired_dice.py``. More rounds are added to a finished run by running it again with a larger
``--rounds`` (docs/semi.md).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402
from bench_semi import pseudo_label_quality, test_pairs  # noqa: E402
from paired_dice import image_dice, paired_interval, parse_scoring_args, scoring_parser  # noqa: E402

from napari_matchseg.bank import ReferenceBank  # noqa: E402
from napari_matchseg.image_io import read_image, read_mask  # noqa: E402
from napari_matchseg.pseudo_labels import PseudoLabelStore  # noqa: E402


def round_checkpoints(run: Path) -> dict[str, Path]:
    """``{"1 rounds": round-0.safetensors, ...}`` in round order."""
    found = {int(m.group(1)): p for p in run.glob("round-*.safetensors")
             if (m := re.fullmatch(r"round-(\d+)\.safetensors", p.name))}
    return {f"{r + 1} rounds": found[r] for r in sorted(found)}


def run_truth(data: Path, dataset: str, run: Path) -> dict:
    """The dataset's masks of the images a run pseudo-labelled (they are named by their dataset ids)."""
    names = [r["name"] for r in PseudoLabelStore(run / "pseudo" / "round-0").records()]
    images = data / dataset / "images"
    return {n: read_mask(data / dataset / "masks" / f"{n}.png", read_image(images / f"{n}.png").shape) for n in names}


def compare_rounds(bank: ReferenceBank, pairs, checkpoints: dict[str, Path], rounds: list[str], references: list[str],
                   device: str = "auto") -> dict:
    """Mean Dice of every checkpoint, and each round's paired difference with each reference checkpoint."""
    dice = {label: image_dice(bank, path, pairs, device) for label, path in checkpoints.items()}
    result = {"n": len(pairs), "dice": {k: round(float(v.mean()), 4) for k, v in dice.items()}, "vs": {}}
    for ref in references:
        for label in rounds:
            m, lo, hi = paired_interval(dice[ref], dice[label])
            result["vs"].setdefault(ref, {})[label] = {"mean": round(m, 4), "ci95": [round(lo, 4), round(hi, 4)]}
    return result


def main() -> None:
    ap = scoring_parser()
    ap.add_argument("--bank", required=True, help="the labelled bank the run learnt from (its supports)")
    ap.add_argument("--baseline", required=True, help="the loop's start checkpoint (labelled-only fine-tuning)")
    ap.add_argument("--run", required=True, help="run_semi folder holding round-<r>.safetensors")
    ap.add_argument("--control", action="append", default=[], metavar="NAME=CKPT",
                    help="another checkpoint every round is compared with (repeatable)")
    ap.add_argument("--truth", action="store_true",
                    help="also score each round's pseudo-labels against the dataset's masks (a benchmark run on "
                         "dataset images, which keep their ids as names)")
    args = parse_scoring_args(ap)
    controls = dict(c.split("=", 1) for c in args.control)
    rounds = round_checkpoints(Path(args.run))
    if not rounds:
        raise SystemExit(f"{args.run} holds no round-<r>.safetensors: is it a run_semi folder?")
    checkpoints = {"baseline": Path(args.baseline), **{k: Path(v) for k, v in controls.items()}, **rounds}
    for label, path in checkpoints.items():
        if not path.is_file():
            raise SystemExit(f"{label}: no checkpoint at {path}")
    bank = ReferenceBank.open(args.bank)
    report = {"machine": machine(), "dataset": args.dataset,
              "checkpoints": {k: str(v) for k, v in checkpoints.items()}, "splits": {}}
    for split in args.split:
        pairs = test_pairs(Path(args.data), args.dataset, split)
        result = compare_rounds(bank, pairs, checkpoints, list(rounds), ["baseline", *controls], args.device)
        report["splits"][split] = result
        dice = ", ".join(f"{k} {v:.4f}" for k, v in result["dice"].items())
        print(f"{args.dataset} {split} (n={result['n']}): {dice}")
        for ref, cells in result["vs"].items():
            for label, c in cells.items():
                print(f"  {label} - {ref}: {c['mean']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]", flush=True)
    if args.truth:
        report["pseudo_labels"] = pseudo_label_quality(Path(args.run), run_truth(Path(args.data), args.dataset,
                                                                                  Path(args.run)))
        for q in report["pseudo_labels"]:
            print(f"  pseudo-labels {q['round']}: Dice vs truth {q['dice_vs_truth']:.3f}, selected "
                  f"{q['selected_dice_vs_truth']:.3f}, confident pixels right {q['confident_pixel_accuracy']:.3f}")
    print(f"machine: {report['machine']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
