"""Two probes of where the ``context`` proposer's limit is (issue 36, stage 3), on the same draws as bench_context.py.

    .venv/bin/python benchmarks/context_probes.py --probe ceiling --split val --n 10 \\
        --json benchmarks/results/context_ceiling_val.json
    .venv/bin/python benchmarks/context_probes.py --probe self-support --split val --n 10 \\
        --json benchmarks/results/context_self_support_val.json

``ceiling``: the proposer's steps after the map (objects, decoder boxes, agreement gate) fed the ground truth's own
cell map (the mask averaged over each 4 x 4-pixel cell): what a perfect map would give, with and without the
decoder. ``self-support``: the query's own confident cells (probability > 0.7 foreground, < 0.3 background) join
the references and the scorers are fitted again (``refit``, each cell counted 1 or 4 times, once or twice), or
the query's own mean foreground / background prototype is averaged with the map (``own-prototypes``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_context import context, supports
from bench_foundation import machine
from context_data import DATASETS, UNSEEN, banks, common_args, queries

from napari_matchseg.feature_cache import FeatureCache
from napari_matchseg.in_context import (GRID, ContextMap, References, build_scorers, cell_features, map_to_image,
                                        mask_to_cells, valid_cells)
from napari_matchseg.litemedsam import LiteMedSamPredictor
from napari_matchseg.metrics import dice
from napari_matchseg.proposers.context import OBJECT_PIXELS, count_objects

HI, LO = 0.7, 0.3  # the query's cells taken as its own foreground / background


def on_cells(prob: torch.Tensor, emb) -> np.ndarray:
    """A probability per valid cell (flat) as the image-sized map the proposer's later steps take."""
    rows, cols = valid_cells(emb.scaled)
    full = torch.zeros(GRID, GRID)
    full[:rows, :cols] = prob.view(rows, cols)
    return map_to_image(ContextMap(full, (rows, cols)), emb.scaled, emb.size)


def self_supported(proposer, spec: str):
    """``proposer`` whose map also learns from the query's own confident cells (``refit:COPIES:ROUNDS`` or
    ``own-prototypes``)."""
    def reference_map(emb, images, masks, points=()):
        scorers, objects, cells = proposer._fitted(images, masks)
        feats = cell_features(emb.features.cpu(), emb.scaled)
        prob = torch.stack([s(feats) for s in scorers]).mean(0) if scorers else torch.zeros(len(feats))
        fg, bg = prob > HI, prob < LO
        if spec == "own-prototypes" and fg.any() and bg.any():
            own = torch.sigmoid(20 * (feats @ F.normalize(feats[fg].mean(0), dim=0)
                                      - feats @ F.normalize(feats[bg].mean(0), dim=0)))
            prob = (prob + own) / 2
        elif spec.startswith("refit"):
            _, copies, rounds = spec.split(":")
            for _ in range(int(rounds)):
                keep = (prob > HI) | (prob < LO)
                if not (prob > HI).any():
                    break
                own = References(feats[keep].repeat_interleave(int(copies), 0),
                                 (prob[keep] > HI).float().repeat_interleave(int(copies), 0))
                prob = torch.stack([s(feats) for s in build_scorers(References.concat([*cells, own]), "mean")]).mean(0)
        return on_cells(prob, emb), objects

    proposer._reference_map = reference_map
    return proposer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(ap, "val", 10)
    ap.add_argument("--probe", required=True, choices=("ceiling", "self-support"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = LiteMedSamPredictor("cpu")
    predictor.attach_cache(FeatureCache(args.work, predictor.model_id))
    retriever = None
    if args.retriever == "medsam":
        from napari_matchseg.retrieval.medsam import MedSamRetriever
        retriever = MedSamRetriever(model=predictor)
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}", flush=True)
    results = {}
    for name in args.datasets:
        bank, foreign = banks(args.data, args.work, name)
        rows: dict[str, list[float]] = {}
        if args.probe == "self-support":
            variants = {v: (context(predictor, "mean/box") if v == "stage 1" else
                            self_supported(context(predictor, "mean/box"), v))
                        for v in ("stage 1", "refit:1:1", "refit:4:1", "refit:1:2", "own-prototypes")}
        for rid, img, gt in queries(args.data, name, args.split, args.n):
            emb = predictor.embedding(img)
            s_img, s_mask = supports(bank, foreign, rid, img, "retrieved", 8, retriever)
            if args.probe == "ceiling":
                truth = on_cells(mask_to_cells(gt, emb.scaled).flatten(), emb)
                objects = int(np.ceil(np.median([count_objects(m, OBJECT_PIXELS) for m in s_mask])))
                rows.setdefault("truth's cell map", []).append(dice(truth >= 0.5, gt))
                for spec in ("mean/box", "mean/box/0.0"):
                    p = context(predictor, spec)
                    p._reference_map = lambda e, a, b, pts=(): (truth, objects)
                    label = "+ decoder" + (" (no gate)" if spec.endswith("0.0") else "")
                    rows.setdefault(label, []).append(dice(p.predict(img, s_img, s_mask) >= 0.5, gt))
            else:
                for v, p in variants.items():
                    rows.setdefault(v, []).append(dice(p.predict(img, s_img, s_mask) >= 0.5, gt))
        results[name] = {k: float(np.mean(v)) for k, v in rows.items()}
        print(name, json.dumps({k: round(v, 3) for k, v in results[name].items()}), flush=True)
    labels = list(next(iter(results.values())))
    summary = {g: {lab: float(np.mean([results[n][lab] for n in names])) for lab in labels}
               for g, names in (("unseen6", UNSEEN), ("all9", DATASETS)) if all(n in results for n in names)}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                                               "datasets": results, "summary": summary, "time": time.ctime()},
                                              indent=1))


if __name__ == "__main__":
    main()
