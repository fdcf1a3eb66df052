"""The SAM-Match table of docs/semi.md from the protocol's result files (sam_match_protocol.sh).

    .venv/bin/python benchmarks/sam_match_table.py [--dataset busi] [--results benchmarks/results]

Reads ``sam_match_seed<S>_<dataset>.json`` (one draw each: rows (a), (b), (c3), (d) on the test split, and each
round's pseudo-labels against the hidden truth), ``sam_match_c2_seed<S>_<dataset>.json`` where row (c2) (the round
teacher without refinement: (d) without LiteMedSAM) was run on that draw, and, when present,
``sam_match_<dataset>.json`` (semi_subsets.py: the paired differences per draw with their 95 % intervals over the
images, test and val). Prints markdown.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

ROWS = {"a": "(a) start", "b": "(b) labelled only", "c3": "(c) mean teacher", "c2": "(c2) round teacher",
        "d": "(d) LiteMedSAM-refined"}


def row_key(label: str) -> str | None:
    m = re.match(r"\((\w+)\)", label)
    key = m and {"a": "a", "b": "b", "c2": "c2", "c3": "c3", "d": "d"}.get(m.group(1))
    return key or None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="busi")
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    draws = {}
    for f in sorted(args.results.glob(f"sam_match_seed*_{args.dataset}.json")):
        seed = int(re.search(r"seed(\d+)_", f.name).group(1))
        draws[seed] = json.loads(f.read_text())
        extra = args.results / f"sam_match_c2_seed{seed}_{args.dataset}.json"  # (c2), run afterwards on the draw
        if extra.exists():
            draws[seed]["results"].update(json.loads(extra.read_text())["results"])
    if not draws:
        raise SystemExit(f"no sam_match_seed*_{args.dataset}.json in {args.results}")
    first = next(iter(draws.values()))
    print(f"machine: {first['machine']}; {first['args']['rounds']} rounds x {first['args']['steps']} steps; "
          f"start {Path(first['args']['checkpoint']).name}\n")
    print("| draw | " + " | ".join(ROWS.values()) + " | (d) - (c) | (d) - (b) | (d) - (c2) |")
    print("|---|" + "---:|" * (len(ROWS) + 3))
    table = {k: [] for k in ROWS}
    for seed, d in sorted(draws.items()):
        dice = {row_key(label): r["dice_mean"] for label, r in d["results"].items() if row_key(label)}
        for k in ROWS:
            table[k].append(dice.get(k, np.nan))
        cells = " | ".join(f"{dice[k]:.3f}" if k in dice else "" for k in ROWS)
        diffs = [f"{dice['d'] - dice[o]:+.3f}" if "d" in dice and o in dice else "" for o in ("c3", "b", "c2")]
        print(f"| {seed} | {cells} | {' | '.join(diffs)} |")
    full = [i for i in range(len(draws)) if not np.isnan([table[k][i] for k in ("b", "c3", "d")]).any()]
    mean = {k: float(np.mean([table[k][i] for i in full])) for k in ROWS}  # (c2): nan unless on every draw
    print(f"| mean ({len(full)}) | " + " | ".join(f"{mean[k]:.3f}" if not np.isnan(mean[k]) else "" for k in ROWS)
          + f" | {mean['d'] - mean['c3']:+.3f} | {mean['d'] - mean['b']:+.3f} | |")
    print("\nPseudo-labels of (d) against the hidden truth, per round: Dice before refinement (the model's own) -> "
          "after; refined images; refinement helped / hurt (Dice change > 0.01 / < -0.01)\n")
    print("| draw | round | before | after | refined / images | helped | hurt | (c2)'s, same teacher unrefined |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for seed, d in sorted(draws.items()):
        res = {row_key(label): r for label, r in d["results"].items() if row_key(label)}
        c_rounds = {q["round"]: q for q in res.get("c2", {}).get("pseudo_labels", [])}
        for q in res.get("d", {}).get("pseudo_labels", []):
            before = q.get("unrefined_dice_vs_truth", q["dice_vs_truth"])
            c = c_rounds.get(q["round"], {}).get("dice_vs_truth")
            print(f"| {seed} | {q['round']} | {before:.3f} | {q['dice_vs_truth']:.3f} | {q['refined']} / {q['images']} "
                  f"| {q.get('refinement_helped', 0)} | {q.get('refinement_hurt', 0)} | "
                  + (f"{c:.3f}" if c is not None else "") + " |")
    paired = args.results / f"sam_match_{args.dataset}.json"
    if paired.exists():
        out = json.loads(paired.read_text())
        print("\nPaired per image (semi_subsets.py; mean over the draws, 95 % interval over the images):\n")
        print("| split | comparison | per draw | mean | 95 % interval |\n|---|---|---|---:|---|")
        for split, r in out["splits"].items():
            for c in r["comparisons"]:
                if "d" not in c["b_minus_a"].split(" - ")[0]:
                    continue
                per = ", ".join(f"{p['mean']:+.3f}" for p in c["per_run"])
                print(f"| {split} | {c['b_minus_a']} | {per} | {c['mean']:+.3f} | "
                      f"[{c['ci95_images'][0]:+.3f}, {c['ci95_images'][1]:+.3f}] |")


if __name__ == "__main__":
    main()
