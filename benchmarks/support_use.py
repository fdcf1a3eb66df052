"""Does a checkpoint read its supports? Dice on synthetic tasks with the true support masks vs inverted ones.

    .venv/bin/python benchmarks/support_use.py --checkpoint A.safetensors [--checkpoint B ...] [--episodes 64]

On a synthetic task (``training/synthetic.py``) only the supports say which of two kinds of object is
foreground, so a network that reads them scores far lower when their masks are inverted; one that ignores
them scores the same. Random vs retrieved supports on a real test split (``eval_matchseg.py NAME=CKPT:random``)
answers the other question: whether the supports change anything on that dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402

from napari_matchseg.checkpoint import build_matchseg  # noqa: E402
from napari_matchseg.metrics import dice  # noqa: E402
from napari_matchseg.training.synthetic import synthetic_task  # noqa: E402


def dice_of(logits: torch.Tensor, truth: torch.Tensor) -> float:
    return dice((logits > 0).numpy(), (truth > 0.5).numpy())


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
        rng = np.random.default_rng(0)  # the same episodes for every checkpoint
        true, inverted = [], []
        with torch.no_grad():
            for _ in range(args.episodes):
                imgs, masks = synthetic_task(rng, 1 + args.k, model.config.image_size)
                s, m = imgs[None, 1:], masks[None, 1:]
                true.append(dice_of(model(imgs[:1], s, m), masks[0]))
                inverted.append(dice_of(model(imgs[:1], s, 1 - m), masks[0]))
        results[ckpt] = {"dice_true_masks": round(float(np.mean(true)), 4),
                         "dice_inverted_masks": round(float(np.mean(inverted)), 4)}
        print(f"{ckpt}: Dice {results[ckpt]['dice_true_masks']:.3f} with the true support masks, "
              f"{results[ckpt]['dice_inverted_masks']:.3f} with them inverted")
    out = {"machine": machine(), "episodes": args.episodes, "k": args.k, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
