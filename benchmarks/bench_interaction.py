"""Interaction latency of the prompt tools: from a click or a box to LiteMedSAM's mask, on real images.

    .venv/bin/python benchmarks/bench_interaction.py --json benchmarks/results/interaction.json

For ``--n`` BUSI test images (benign and malignant): the first prompt on an image (its embedding is computed:
what the user waits for once per image), then, with the embedding cached, a box, the box + 1 click, the box + 3
clicks, and clicks alone correcting a proposal (the proposal's box is used) - each the time of
:func:`napari_matchseg.interactive.prompted_mask`, which is what the plugin's worker runs between the layer's
change and the mask being drawn. Medians and 90th percentiles in milliseconds; Dice of the box prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_dask import busi_rows  # noqa: E402
from bench_foundation import machine  # noqa: E402

from napari_matchseg.image_io import read_image, read_mask  # noqa: E402
from napari_matchseg.interactive import Prompts, prompted_mask  # noqa: E402
from napari_matchseg.litemedsam import LiteMedSamPredictor  # noqa: E402
from napari_matchseg.metrics import dice  # noqa: E402


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return 1000 * (time.perf_counter() - t), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    ids = [i for i in busi_rows(args.data)["test"] if not i.startswith("normal")][: args.n]
    predictor = LiteMedSamPredictor()
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {k: [] for k in ("first prompt (embedding)", "box", "box + 1 click",
                                                     "box + 3 clicks", "clicks on a proposal")}
    dices = []
    for rid in ids:
        image = read_image(args.data / "busi" / "images" / f"{rid}.png")
        gt = read_mask(args.data / "busi" / "masks" / f"{rid}.png", image.shape)
        ys, xs = np.nonzero(gt)
        box = [[float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]]
        inside = [[float(xs[i]), float(ys[i]), 1] for i in rng.choice(len(xs), 3)]
        ms, (prob, _, _) = timed(lambda: prompted_mask(predictor, image, Prompts([], box)))
        times["first prompt (embedding)"].append(ms)
        dices.append(dice(prob >= 0.5, gt))
        times["box"].append(timed(lambda: prompted_mask(predictor, image, Prompts([], box)))[0])
        times["box + 1 click"].append(timed(lambda: prompted_mask(predictor, image, Prompts(inside[:1], box)))[0])
        times["box + 3 clicks"].append(timed(lambda: prompted_mask(predictor, image, Prompts(inside, box)))[0])
        times["clicks on a proposal"].append(timed(lambda: prompted_mask(predictor, image, Prompts(inside[:1], []),
                                                                         proposal=gt.astype(np.float32)))[0])
    rows = {k: {"median_ms": round(float(np.median(v)), 1), "p90_ms": round(float(np.percentile(v, 90)), 1)}
            for k, v in times.items()}
    result = {"machine": machine(), "threads": torch.get_num_threads(), "images": len(ids),
              "box_dice_mean": round(float(np.mean(dices)), 4), "latency": rows}
    print(f"{len(ids)} BUSI test images; {result['machine']}; {result['threads']} threads")
    for k, r in rows.items():
        print(f"  {k:>26}: median {r['median_ms']:7.1f} ms   p90 {r['p90_ms']:7.1f} ms")
    print(f"  box prompt Dice {result['box_dice_mean']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
