"""Clicks a simulated user needs (issue #36 stage 2): NoC@85/90 and Dice after 1/3/5 clicks, per dataset.

    .venv/bin/python benchmarks/prefetch_context.py        # embeddings of every image, once (resumable)
    .venv/bin/python benchmarks/bench_clicks.py --split test --n 20 --json benchmarks/results/context_clicks.json

Rows (the same deterministic user, napari_matchseg.simulated_user, for all):
* ``context k=8``: the in-context proposal from 8 retrieved references, then clicks through the same proposer;
* ``context k=0``: no references, clicks only (the first click starts the mask);
* ``litemedsam``: LiteMedSAM from the clicks alone (the litemedsam proposer);
* ``v2 + litemedsam``: the plugin's clicks on a proposal without references: MatchSeg v2's proposal, then
  LiteMedSAM through napari_matchseg.interactive.prompted_mask (its click rule: the proposal's box or a box around
  the positive clicks, whichever the decoder's IoU estimate prefers);
* ``v2 + litemedsam (proposal box)``: the same with the rule before (always the proposal's box).
Also the milliseconds per click (every embedding cached: the decoder, the map and the click rules).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_foundation import machine
from context_data import DATASETS, UNSEEN, banks, common_args, queries, reference_ids

from napari_matchseg.feature_cache import FeatureCache
from napari_matchseg.interactive import Prompts, prompted_mask
from napari_matchseg.litemedsam import LiteMedSamPredictor
from napari_matchseg.proposers.context import ContextProposer
from napari_matchseg.proposers.litemedsam import LiteMedSamProposer
from napari_matchseg.proposers.matchseg import MatchSegPredictor
from napari_matchseg.simulated_user import REPORTED_CLICKS, clicks_to_reach, simulate

ROWS = ("context k=8", "context k=0", "litemedsam", "v2 + litemedsam", "v2 + litemedsam (proposal box)")


def run_dataset(args, name, predictor, models) -> dict:
    bank, _ = banks(args.data, args.work, name)
    context, lite, v2 = models
    out = {row: {"noc85": [], "noc90": [], **{f"dice_{n}": [] for n in (0, *REPORTED_CLICKS)}} for row in args.rows}
    click_ms: dict[str, list[float]] = {row: [] for row in args.rows}
    for rid, img, gt in queries(args.data, name, args.split, args.n):
        predictor.embedding(img)
        ids = reference_ids(bank, img, rid, "retrieved", 8)
        s_img, s_mask = [bank.load_image(i) for i in ids], [bank.load_mask(i) for i in ids]
        base = v2.predict(img, s_img, s_mask) if any(r.startswith("v2") for r in args.rows) else None
        for row in args.rows:
            first, predict = None, None
            if row == "context k=8":
                first = context.predict(img, s_img, s_mask) >= 0.5
                predict = lambda pts: context.predict(img, s_img, s_mask, prompts={"points": pts}) >= 0.5  # noqa: E731
            elif row == "context k=0":
                predict = lambda pts: context.predict(img, prompts={"points": pts}) >= 0.5  # noqa: E731
            elif row == "litemedsam":
                predict = lambda pts: lite.predict(img, prompts={"points": pts}) >= 0.5  # noqa: E731
            else:
                first = base >= 0.5
                rule = "proposal-box" if row.endswith("(proposal box)") else "choose"
                predict = lambda pts, rule=rule: prompted_mask(predictor, img, Prompts(pts, []), base,  # noqa: E731
                                                               click_rule=rule)[0] >= 0.5

            def timed(pts, predict=predict, row=row):
                t = time.perf_counter()
                mask = predict(pts)
                click_ms[row].append(1000 * (time.perf_counter() - t))
                return mask

            dices = simulate(timed, gt, args.max_clicks, first)
            r = out[row]
            r["noc85"].append(clicks_to_reach(dices, 0.85))
            r["noc90"].append(clicks_to_reach(dices, 0.9))
            for n in (0, *REPORTED_CLICKS):
                r[f"dice_{n}"].append(dices[min(n, args.max_clicks)])
    return {row: {**{k: float(np.mean(v)) for k, v in r.items()}, "n": len(r["noc90"]),
                  "ms_per_click": float(np.median(click_ms[row])) if click_ms[row] else None}
            for row, r in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    common_args(ap, "test", 20)
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--click-mode", default="map", choices=("map", "decoder"),
                    help="context with references: clicks label the image's cells for the map, or re-draw the "
                         "object they fall in through LiteMedSAM's decoder")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = LiteMedSamPredictor("cpu")
    predictor.attach_cache(FeatureCache(args.work, predictor.model_id))
    models = (ContextProposer(model=predictor, clicks=args.click_mode), LiteMedSamProposer(model=predictor),
              MatchSegPredictor(None, "cpu"))
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}", flush=True)
    results = {}
    for name in args.datasets:
        t = time.time()
        results[name] = run_dataset(args, name, predictor, models)
        print(f"{name} ({time.time() - t:.0f} s): " + "; ".join(
            f"{row} NoC90 {r['noc90']:.1f} D1 {r['dice_1']:.3f} D5 {r['dice_5']:.3f}"
            for row, r in results[name].items()), flush=True)
    keys = ("dice_0", "dice_1", "dice_3", "dice_5", "noc85", "noc90")
    summary = {g: {row: {k: float(np.mean([results[d][row][k] for d in names])) for k in keys} for row in args.rows}
               for g, names in (("unseen6", UNSEEN), ("all9", DATASETS)) if all(d in results for d in names)}
    print("\n| dataset | row | Dice 0 | 1 click | 3 | 5 | NoC@85 | NoC@90 | ms/click |\n|---|---|---:|---:|---:|---:|---:|"
          "---:|---:|")
    for name, rows in [*results.items(), *summary.items()]:
        for row, r in rows.items():
            ms = f"{r['ms_per_click']:.0f}" if r.get("ms_per_click") else ""
            print(f"| {name} | {row} | " + " | ".join(f"{r[k]:.3f}" if k.startswith("dice") else f"{r[k]:.1f}"
                                                      for k in keys) + f" | {ms} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                                               "datasets": results, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
