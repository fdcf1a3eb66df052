"""Interaction latency of the prompt tools: from a click or a box to LiteMedSAM's mask, on real images.

    .venv/bin/python benchmarks/bench_interaction.py --json benchmarks/results/interaction.json

For ``--n`` BUSI test images (benign and malignant): the first prompt on an image (its embedding is computed:
what the user waits for once per image), then, with the embedding cached, a box, the box + 1 click, the box + 3
clicks, and clicks alone correcting a proposal (the proposal's box is used) - each the time of
:func:`napari_matchseg.interactive.prompted_mask`, which is what the plugin's worker runs between the layer's
change and the mask being drawn. Medians and 90th percentiles in milliseconds; Dice of the box prompt.
Also what the plugin's background embedding gives: the first box on an image that was shown ``--shown`` seconds
before (handed to :class:`~napari_matchseg.background.BackgroundEmbedder` when shown, as the plugin does), and the
time to load the model (a fresh plugin loads it in the background when the dock opens).

``--clicks DATASETS``: also the simulated user (napari_matchseg.simulated_user) correcting a MatchSeg v2 proposal
(8 retrieved references) with clicks through the plugin's click rule (``prompted_mask``: the proposal's box or a box
around the positive clicks, whichever LiteMedSAM's IoU estimate prefers) and with the rule before it (always the
proposal's box): the Dice after 0/1/3/5 clicks per dataset, ``--click-n`` test images each (the rows
``v2 + litemedsam`` of bench_clicks.py; its banks and embedding cache, see prefetch_context.py).
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

from napari_matchseg.background import BackgroundEmbedder  # noqa: E402
from napari_matchseg.image_io import read_image, read_mask  # noqa: E402
from napari_matchseg.interactive import Prompts, prompted_mask  # noqa: E402
from napari_matchseg.litemedsam import LiteMedSamPredictor  # noqa: E402
from napari_matchseg.metrics import dice  # noqa: E402


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return 1000 * (time.perf_counter() - t), out


def click_rule_dice(args, predictor) -> dict:
    """Dice after 0/1/3/5 simulated clicks on a v2 proposal, the plugin's click rule against the one before."""
    import argparse as _argparse

    from bench_clicks import run_dataset
    from context_data import DEFAULT_WORK

    from napari_matchseg.feature_cache import FeatureCache
    from napari_matchseg.proposers.matchseg import MatchSegPredictor

    rows = ["v2 + litemedsam", "v2 + litemedsam (proposal box)"]
    ns = _argparse.Namespace(data=args.data, work=args.work or DEFAULT_WORK, split="test", n=args.click_n,
                             max_clicks=5, rows=rows)
    predictor.attach_cache(FeatureCache(ns.work, predictor.model_id))
    models = (None, None, MatchSegPredictor(None, "cpu"))
    out = {}
    for name in args.clicks:
        r = run_dataset(ns, name, predictor, models)
        out[name] = {row: {k: round(v, 4) for k, v in r[row].items() if k.startswith("dice") or k == "n"}
                     for row in rows}
        for row in rows:
            d = out[name][row]
            print(f"  {name} {row:>31}: Dice {d['dice_0']:.3f} -> 1 click {d['dice_1']:.3f}, 3: {d['dice_3']:.3f}, "
                  f"5: {d['dice_5']:.3f} (n={d['n']:.0f})", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--shown", type=float, default=2.0, help="seconds an image is shown before the first prompt")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--clicks", nargs="*", default=[], metavar="DATASET",
                    help="simulated-user Dice after 1/3/5 clicks with the plugin's click rule on these datasets")
    ap.add_argument("--click-n", type=int, default=10, help="test images per dataset for --clicks")
    ap.add_argument("--work", type=Path, help="bench_clicks.py's cache folder (default: its own)")
    args = ap.parse_args(argv)
    ids = [i for i in busi_rows(args.data)["test"] if not i.startswith("normal")][: args.n]
    load_ms, predictor = timed(LiteMedSamPredictor)
    background = BackgroundEmbedder(lambda: predictor)
    rng = np.random.default_rng(0)
    shown = f"first prompt, image shown {args.shown:g} s before"
    times: dict[str, list[float]] = {k: [] for k in ("first prompt (embedding)", shown, "box", "box + 1 click",
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
        predictor._memory.clear()  # (the benchmark's own reset: the image is new again)
        background.request(rid, image)  # the plugin shows it ...
        time.sleep(args.shown)  # ... the user looks for a moment, then draws a box
        times[shown].append(timed(lambda: prompted_mask(predictor, image, Prompts([], box)))[0])
        times["box"].append(timed(lambda: prompted_mask(predictor, image, Prompts([], box)))[0])
        times["box + 1 click"].append(timed(lambda: prompted_mask(predictor, image, Prompts(inside[:1], box)))[0])
        times["box + 3 clicks"].append(timed(lambda: prompted_mask(predictor, image, Prompts(inside, box)))[0])
        times["clicks on a proposal"].append(timed(lambda: prompted_mask(predictor, image, Prompts(inside[:1], []),
                                                                         proposal=gt.astype(np.float32)))[0])
    rows = {k: {"median_ms": round(float(np.median(v)), 1), "p90_ms": round(float(np.percentile(v, 90)), 1)}
            for k, v in times.items()}
    result = {"machine": machine(), "threads": torch.get_num_threads(), "images": len(ids),
              "encoder_runtime": predictor.runtime, "model_load_ms": round(load_ms, 1),
              "box_dice_mean": round(float(np.mean(dices)), 4), "latency": rows}
    print(f"{len(ids)} BUSI test images; {result['machine']}; {result['threads']} threads; encoder "
          f"{predictor.runtime}; model loaded in {load_ms:.0f} ms")
    for k, r in rows.items():
        print(f"  {k:>40}: median {r['median_ms']:7.1f} ms   p90 {r['p90_ms']:7.1f} ms")
    print(f"  box prompt Dice {result['box_dice_mean']:.3f}")
    if args.clicks:
        result["clicks"] = click_rule_dice(args, predictor)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
