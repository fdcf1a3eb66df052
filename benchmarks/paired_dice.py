"""Is checkpoint B better than checkpoint A, or is the difference noise? Paired test-split Dice.

    .venv/bin/python benchmarks/paired_dice.py --dataset kvasir --bank runs/semi-long/kvasir/bank \
        --a runs/semi-long/kvasir/finetuned-2x.safetensors \
        --b runs/semi-long/kvasir/semi-after-ft/matchseg-semi.safetensors

``--a default --b default:mirror`` compares the shipped checkpoint with and without the test-time mirror.
Both checkpoints segment the same test images with the same bank (k = 8, handcrafted retrieval, threshold 0.5,
as in ``bench_semi.py``); the per-image differences B - A are resampled (10,000 bootstrap draws, seed 0) for a
95 % interval of the mean difference. Differences of 0.02-0.03 Dice are within the noise of ~130-200 test images.
``--split val`` compares on the validation split instead: the one to choose a setting on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402
from bench_semi import EVAL_CONFIG, test_pairs  # noqa: E402
from eval_matchseg import method_predictor  # noqa: E402

from napari_matchseg.bank import ReferenceBank  # noqa: E402
from napari_matchseg.pipeline import Pipeline, evaluate  # noqa: E402
from napari_matchseg.retrieval import get_retriever  # noqa: E402


def paired_interval(a: np.ndarray, b: np.ndarray, draws: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a and its 95 % bootstrap interval (images resampled with replacement)."""
    diff = np.asarray(b, float) - np.asarray(a, float)
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(draws, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def scoring_parser(splits: bool = True) -> argparse.ArgumentParser:
    """Options shared by the scripts that re-score checkpoints on a dataset: data, dataset, splits (unless
    ``splits`` is False), threads, device, JSON output (``parse_scoring_args`` applies ``--threads``)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--dataset", required=True)
    if splits:
        ap.add_argument("--split", nargs="+", default=["test", "val"], choices=("test", "val"))
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 when two runs share two cores)")
    ap.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    ap.add_argument("--json")
    return ap


def parse_scoring_args(ap: argparse.ArgumentParser) -> argparse.Namespace:
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return args


def image_dice(bank: ReferenceBank, checkpoint, pairs, device: str = "auto") -> np.ndarray:
    """Per-image Dice of a MatchSeg ``checkpoint`` on ``pairs`` with ``bank``'s references as supports, scored
    as in ``bench_semi.py`` (handcrafted retrieval, k = 8, threshold 0.5)."""
    from napari_matchseg.proposers.matchseg import MatchSegPredictor

    pipeline = Pipeline(EVAL_CONFIG, retriever=get_retriever("handcrafted"),
                        proposer=MatchSegPredictor(checkpoint, device=device))
    rows = evaluate(pipeline, bank, pairs)["rows"]
    return np.array([r["dice"] for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--bank", required=True)
    ap.add_argument("--a", required=True, help="reference checkpoint (CKPT[:random][+mirror], as in eval_matchseg.py)")
    ap.add_argument("--b", required=True, help="checkpoint compared with it (same form)")
    ap.add_argument("--split", default="test", choices=("test", "val"))
    ap.add_argument("--json")
    args = ap.parse_args()
    data, name = Path(args.data), args.dataset
    pairs = test_pairs(data, name, args.split)
    bank, retriever = ReferenceBank.open(args.bank), get_retriever("handcrafted")
    dice = {}
    for key in ("a", "b"):
        predictor, support = method_predictor(getattr(args, key))
        config = dataclasses.replace(EVAL_CONFIG, support=support)
        rows = evaluate(Pipeline(config, retriever=retriever, proposer=predictor), bank, pairs)["rows"]
        dice[key] = np.array([r["dice"] for r in rows])
    mean, lo, hi = paired_interval(dice["a"], dice["b"])
    out = {"machine": machine(), "dataset": name, "split": args.split, "n": len(pairs), "a": args.a, "b": args.b,
           "dice_a": round(float(dice["a"].mean()), 4), "dice_b": round(float(dice["b"].mean()), 4),
           "mean_difference": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)],
           "b_better": int((dice["b"] > dice["a"]).sum()), "a_better": int((dice["a"] > dice["b"]).sum())}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
