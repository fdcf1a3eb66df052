"""SAM 2 proposer speed: one query with k reference memories cached vs recomputed, and SAM-Match refinement.

    .venv/bin/python benchmarks/bench_sam2.py [--model sam2.1_hiera_tiny] [--image-size 1024] [-k 8] [--device auto]

Uses a randomly initialised model of the named size when its checkpoint is not on this machine: speed does not
depend on the weight values (quality does, and is not measured here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402

from napari_matchseg import weights  # noqa: E402
from napari_matchseg.proposers.sam2_memory import Sam2MemoryProposer  # noqa: E402
from napari_matchseg.sam2_model import build_sam2_model  # noqa: E402
from napari_matchseg.refiners.sam2 import Sam2Refiner  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sam2.1_hiera_tiny")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("-k", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    real = weights.where(args.model).is_file()
    model = build_sam2_model(args.model, device=args.device, image_size=args.image_size, random_init=not real)
    rng = np.random.default_rng(0)
    mask = np.zeros((256, 256), bool)
    mask[60:160, 60:180] = True
    refs = [(rng.integers(0, 256, (256, 256), dtype=np.uint8), mask) for _ in range(args.k)]
    queries = [rng.integers(0, 256, (256, 256), dtype=np.uint8) for _ in range(args.repeats)]

    def run(cached: bool) -> float:
        p = Sam2MemoryProposer(args.model, device=args.device, image_size=args.image_size, model=model)
        times = []
        for q in queries:
            if not cached:
                p.features.clear_memory()
            else:
                p.predict(q, [r[0] for r in refs], [r[1] for r in refs])  # warm: memories computed once
            t = time.perf_counter()
            p.predict(q, [r[0] for r in refs], [r[1] for r in refs])
            if p.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    recomputed, cached = run(False), run(True)
    refiner = Sam2Refiner(model=model)
    prob = np.zeros((256, 256), np.float32)
    prob[60:160, 60:180] = 0.99
    t = time.perf_counter()
    refiner.refine(queries[0], prob)
    refine_s = time.perf_counter() - t
    dev = next(model.parameters()).device
    print(f"machine: {machine()}\ndevice: {dev}; {args.model} at {args.image_size} px "
          f"({'real' if real else 'random'} weights), k = {args.k}\n")
    print("| query, memories recomputed | query, memories cached | speed-up | SAM-Match refinement |")
    print("|---:|---:|---:|---:|")
    print(f"| {recomputed:.2f} s | {cached:.2f} s | {recomputed / cached:.1f}x | {refine_s:.2f} s |")


if __name__ == "__main__":
    main()
