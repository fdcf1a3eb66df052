"""Does a checkpoint read its supports? Dice on synthetic tasks with the true support masks vs inverted ones.

    .venv/bin/python benchmarks/support_use.py --checkpoint A.safetensors [--checkpoint B ...] [--episodes 64]

The measurement is ``training.synthetic.support_use``: on a synthetic task only the supports say which of two
kinds of object is foreground, so a network that reads them scores far lower when their masks are inverted;
one that ignores them scores the same. Random vs retrieved supports on a real test split
(``eval_matchseg.py NAME=CKPT:random``) answers the other question: whether the supports change anything there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402

from napari_matchseg.checkpoint import build_matchseg  # noqa: E402
from napari_matchseg.training.synthetic import support_use  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", action="append", required=True, help="'default' = the shipped one")
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("-k", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()
    results = {}
    for ckpt in args.checkpoint:
        model, _ = build_matchseg(None if ckpt == "default" else ckpt)
        # the same episodes (seed 0) for every checkpoint
        true, inverted = support_use(model, np.random.default_rng(0), args.episodes, args.k)
        results[ckpt] = {"dice_true_masks": round(true, 4), "dice_inverted_masks": round(inverted, 4)}
        print(f"{ckpt}: Dice {results[ckpt]['dice_true_masks']:.3f} with the true support masks, "
              f"{results[ckpt]['dice_inverted_masks']:.3f} with them inverted")
    out = {"machine": machine(), "episodes": args.episodes, "k": args.k, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
