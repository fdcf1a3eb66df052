"""Two probes of where the ``context`` proposer's limit is (issue 36, stage 3), on the same draws as bench_context.py.

    .venv/bin/python benchmarks/context_probes.py --probe ceiling --split val --n 10 \\
        --json benchmarks/results/context_ceiling_val.json
    .venv/bin/python benchmarks/context_probes.py --probe self-support --split val --n 10 \\
        --json benchmarks/results/context_self_support_val.json
    .venv/bin/python benchmarks/context_probes.py --probe diverse --retriever medsam --split val --n 30 \\
        --json benchmarks/results/context_diverse_val.json
    .venv/bin/python benchmarks/context_probes.py --probe guided --retriever medsam --split val --n 10 \\
        --json benchmarks/results/context_guided_val.json

``ceiling``: the proposer's steps after the map (objects, decoder boxes, agreement gate) fed the ground truth's own
cell map (the mask averaged over each 4 x 4-pixel cell): what a perfect map would give, with and without the
decoder. ``self-support``: the query's own confident cells (probability > 0.7 foreground, < 0.3 background) join
the references and the scorers are fitted again (``refit``, each cell counted 1 or 4 times, once or twice), or
the query's own mean foreground / background prototype is averaged with the map (``own-prototypes``).
``diverse``: the 8 references chosen from the retriever's 32 nearest by maximal marginal relevance (weight 0, 0.3,
0.5 on the redundancy; 0 is plain retrieval). ``guided``: the map sharpened by the image's own edges (a guided
filter, radius in pixels of the 256-pixel input, before the objects and the decoder).
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
from context_data import DATASETS, UNSEEN, banks, common_args, make_retriever, queries

from napari_matchseg.feature_cache import FeatureCache
from napari_matchseg.in_context import (
    GRID,
    ContextMap,
    References,
    build_scorers,
    cell_features,
    map_to_image,
    mask_to_cells,
    valid_cells,
)
from napari_matchseg.litemedsam import LiteMedSamPredictor
from napari_matchseg.metrics import dice
from napari_matchseg.proposers.context import OBJECT_PIXELS, count_objects

HI, LO = 0.7, 0.3  # the query's cells taken as its own foreground / background
DIVERSE_POOL = 32


def diverse(vectors: np.ndarray, query: np.ndarray, k: int, weight: float) -> list[int]:
    """Greedy maximal marginal relevance: rows of ``vectors`` (L2-normalised) close to ``query`` and to each other
    as little as ``weight`` asks."""
    sims = vectors @ query
    pool = list(np.argsort(-sims)[:DIVERSE_POOL])
    chosen = [pool.pop(0)]
    while len(chosen) < k and pool:
        redundancy = (vectors[pool] @ vectors[chosen].T).max(1)
        chosen.append(pool.pop(int(np.argmax((1 - weight) * sims[pool] - weight * redundancy))))
    return chosen


def guided_filter(prob: np.ndarray, image: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter of ``prob`` with the image (grey, 0-1) as the guide."""
    from scipy import ndimage as ndi

    g = image.astype(np.float32).mean(2) if image.ndim == 3 else image.astype(np.float32)
    g = (g - g.min()) / max(1e-6, float(g.max() - g.min()))

    def box(x):
        return ndi.uniform_filter(x, size=2 * radius + 1, mode="reflect")

    mg, mp = box(g), box(prob)
    a = (box(g * prob) - mg * mp) / (box(g * g) - mg * mg + eps)
    b = mp - a * mg
    return np.clip(box(a) * g + box(b), 0, 1).astype(np.float32)


def guided(proposer, radius: float, eps: float):
    """``proposer`` whose map is guided-filtered by the image being proposed (``proposer.image``)."""
    own = proposer._reference_map

    def reference_map(emb, images, masks, points=()):
        prob, objects = own(emb, images, masks, points)
        r = max(1, round(radius * max(emb.size) / 256))
        return guided_filter(prob, proposer.image, r, eps), objects

    proposer._reference_map = reference_map
    return proposer


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
    ap.add_argument("--probe", required=True, choices=("ceiling", "self-support", "diverse", "guided"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = LiteMedSamPredictor("cpu")
    predictor.attach_cache(FeatureCache(args.work, predictor.model_id))
    retriever = make_retriever(args.retriever, predictor)
    fed = {"+ decoder": context(predictor, "mean/box"), "+ decoder (no gate)": context(predictor, "mean/box/0.0")}
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}", flush=True)
    results = {}
    for name in args.datasets:
        bank, foreign = banks(args.data, args.work, name)
        rows: dict[str, list[float]] = {}
        if args.probe == "self-support":
            variants = {v: (context(predictor, "mean/box") if v == "stage 1" else
                            self_supported(context(predictor, "mean/box"), v))
                        for v in ("stage 1", "refit:1:1", "refit:4:1", "refit:1:2", "own-prototypes")}
        if args.probe == "guided":
            variants = {"stage 1": context(predictor, "mean/box"),
                        **{f"guided r{r} eps{e}": guided(context(predictor, "mean/box"), r, e)
                           for r, e in ((2, 1e-3), (4, 1e-3), (4, 1e-2), (8, 1e-2))}}
        if args.probe == "diverse":
            from napari_matchseg.retrieval import get_retriever, l2_normalize

            ret = retriever or get_retriever("handcrafted")
            vectors, ids, plain = l2_normalize(bank.embeddings(ret)), bank.ids(), context(predictor, "mean/box")
        for rid, img, gt in queries(args.data, name, args.split, args.n):
            emb = predictor.embedding(img)
            if args.probe == "diverse":
                q = l2_normalize(ret.embed_one(img)[None])[0]
                for weight in (0.0, 0.3, 0.5):
                    picked = [ids[i] for i in diverse(vectors, q, 8, weight)]
                    prob = plain.predict(img, [bank.load_image(i) for i in picked], [bank.load_mask(i) for i in picked])
                    rows.setdefault(f"diverse {weight}", []).append(dice(prob >= 0.5, gt))
                continue
            s_img, s_mask = supports(bank, foreign, rid, img, "retrieved", 8, retriever)
            if args.probe == "ceiling":
                truth = on_cells(mask_to_cells(gt, emb.scaled).flatten(), emb)
                objects = int(np.ceil(np.median([count_objects(m, OBJECT_PIXELS) for m in s_mask])))
                rows.setdefault("truth's cell map", []).append(dice(truth >= 0.5, gt))
                for label, p in fed.items():
                    p._reference_map = lambda e, a, b, pts=(), t=truth, o=objects: (t, o)
                    rows.setdefault(label, []).append(dice(p.predict(img, s_img, s_mask) >= 0.5, gt))
            else:
                for v, p in variants.items():
                    p.image = img
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
