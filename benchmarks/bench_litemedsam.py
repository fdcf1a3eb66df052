"""LiteMedSAM on every shared dataset: box prompts (its ceiling), and SAM-Match refinement of MatchSeg's proposals.

    .venv/bin/python benchmarks/bench_litemedsam.py --split val  --n 30 --json benchmarks/results/litemedsam_val.json
    .venv/bin/python benchmarks/bench_litemedsam.py --split test --n 40 --json benchmarks/results/litemedsam_test.json

Per dataset (the first ``--n`` images of the split with a non-empty mask; bank = the dataset's train split, k = 8,
handcrafted retrieval, the shipped MatchSeg): Dice of LiteMedSAM from one box around the whole ground truth, from
one ground-truth box per object (connected component), from those boxes 10 % larger on each side (a user's loose
boxes), of MatchSeg alone, and of MatchSeg + LiteMedSAM refinement for each variant
(``--variants``: confident threshold / box margin as a fraction of the image's longer side / points on or off /
agreement gate). One embedding per image serves every prompt. Choose a variant on ``val``, report it on ``test``.
Prints the machine and the times (encoder per image, prompt -> mask, refinement).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402
from eval_matchseg import train_bank  # noqa: E402

from napari_matchseg.image_io import read_image, read_mask  # noqa: E402
from napari_matchseg.litemedsam import LiteMedSamPredictor  # noqa: E402
from napari_matchseg.metrics import dice  # noqa: E402
from napari_matchseg.pipeline import Pipeline, PipelineConfig  # noqa: E402
from napari_matchseg.refiners.litemedsam import LiteMedSamRefiner  # noqa: E402
from napari_matchseg.training.data import read_manifest  # noqa: E402
from napari_matchseg.training.train import GROUPS  # noqa: E402

DATASETS = ("busi", "kvasir", "wbc", "covidqu_lungs", "lgg_flair", "dsb2018_nuclei", "drive_vessels",
            "fuseg_footulcer", "tg3k_thyroid")
# threshold, margin (fraction of the longer side), points, gate (min agreement with the proposal; 0 = none)
VARIANTS = {"t95-m5-box-g50": (0.95, 0.05, False, 0.5), "t95-m5-box-g70": (0.95, 0.05, False, 0.7),
            "t95-m5-box-g85": (0.95, 0.05, False, 0.85), "t95-m10-box-g70": (0.95, 0.10, False, 0.7),
            "t60-m5-box-g70": (0.6, 0.05, False, 0.7), "t95-m5-pts-g70": (0.95, 0.05, True, 0.7)}


def gt_box(mask: np.ndarray, loose: float = 0.0) -> list[float]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    dx, dy = loose * (xs.max() - xs.min() + 1), loose * (ys.max() - ys.min() + 1)
    return [max(0.0, xs.min() - dx), max(0.0, ys.min() - dy), min(w - 1.0, xs.max() + dx), min(h - 1.0, ys.max() + dy)]


def gt_boxes(mask: np.ndarray, loose: float = 0.0, min_pixels: int = 10) -> list[list[float]]:
    """One box per object (connected component of at least ``min_pixels``): what a user draws, one per object."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask)
    boxes = [gt_box(labels == i, loose) for i in range(1, n + 1) if (labels == i).sum() >= min_pixels]
    return boxes or [gt_box(mask, loose)]


def run_dataset(data: Path, name: str, split: str, n: int, work: Path, predictor, pipeline, variants) -> dict:
    ids = [r for r in read_manifest(data, name, split, GROUPS.get(name))]
    bank = train_bank(data, name, work)
    rows, t_enc, t_prompt, t_ref = [], [], [], []
    for rid in ids:
        if len(rows) >= n:
            break
        img = read_image(data / name / "images" / f"{rid}.png")
        gt = read_mask(data / name / "masks" / f"{rid}.png", img.shape, allow_full=True)
        if not gt.any():
            continue
        t = time.perf_counter()
        emb = predictor.embedding(img)
        t_enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        box, _ = predictor.predict(emb, boxes=[gt_box(gt)])
        t_prompt.append(time.perf_counter() - t)
        per_object, _ = predictor.predict(emb, boxes=gt_boxes(gt))
        loose, _ = predictor.predict(emb, boxes=gt_boxes(gt, 0.10))
        proposal = pipeline.propose(bank, img)
        prob = proposal.probability
        row = {"id": rid, "box_union": dice(box >= 0.5, gt), "boxes": dice(per_object >= 0.5, gt),
               "loose_boxes": dice(loose >= 0.5, gt),
               "matchseg": dice(prob >= 0.5, gt)}
        for label, (thr, margin, points, gate) in variants.items():
            refiner = LiteMedSamRefiner(model=predictor, min_agreement=gate, use_points=points, margin_fraction=None)
            t = time.perf_counter()
            r = refiner.refine(img, prob, threshold=thr, margin=int(round(margin * max(img.shape[:2]))))
            t_ref.append(time.perf_counter() - t)
            row[label] = dice(r.mask, gt)
            row[label + ":refined"] = bool(r.refined)
        rows.append(row)
    keys = [k for k in rows[0] if k != "id" and not k.endswith(":refined")]
    summary = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    summary.update({f"{k}:refined_share": round(float(np.mean([r[k + ':refined'] for r in rows])), 3)
                    for k in variants})
    return {"n": len(rows), "dice": summary, "encoder_ms_median": round(1000 * float(np.median(t_enc)), 1),
            "prompt_ms_median": round(1000 * float(np.median(t_prompt)), 1),
            "refine_ms_median": round(1000 * float(np.median(t_ref)), 1), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--work", default="/tmp/matchseg-eval")
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tracemalloc.start()
    predictor = LiteMedSamPredictor("cpu")
    pipeline = Pipeline(PipelineConfig(k=8, device="cpu"))
    variants = {k: VARIANTS[k] for k in args.variants}
    results = {"machine": machine(), "split": args.split, "n_per_dataset": args.n, "variants": variants,
               "datasets": {}}
    for name in args.datasets:
        t = time.time()
        r = run_dataset(data, name, args.split, args.n, work, predictor, pipeline, variants)
        r["seconds"] = round(time.time() - t)
        results["datasets"][name] = r
        print(f"{name:16s} n={r['n']:3d} " + " ".join(f"{k} {v:.3f}" for k, v in r["dice"].items()
                                                          if ":" not in k) +
              f"  enc {r['encoder_ms_median']:.0f} ms, prompt {r['prompt_ms_median']:.0f} ms", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    results["peak_python_memory_mb"] = round(tracemalloc.get_traced_memory()[1] / 1e6, 1)
    keys = [k for k in next(iter(results["datasets"].values()))["dice"] if ":" not in k]
    results["mean_over_datasets"] = {k: round(float(np.mean([d["dice"][k] for d in results["datasets"].values()])),
                                              4) for k in keys}
    print(f"\nmachine: {results['machine']}\nmean over datasets: {results['mean_over_datasets']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
