"""The ``context`` proposer against MatchSeg v2 on the nine shared datasets (issue #36, stage 1).

    .venv/bin/python benchmarks/prefetch_context.py                  # encode every image once (resumable)
    .venv/bin/python benchmarks/bench_context.py --split val --n 10 --table main \\
        --variants prototype/none prototype/box probe/none probe/box mean/none mean/box mean/box+mask \\
        --json benchmarks/results/context_val.json                  # choose on val
    .venv/bin/python benchmarks/bench_context.py --split test --n 20 --table main --json benchmarks/results/context_test.json
    .venv/bin/python benchmarks/bench_context.py --split test --n 10 --table k --json benchmarks/results/context_k.json
    .venv/bin/python benchmarks/bench_context.py --split test --n 10 --table refs --json benchmarks/results/context_refs.json

Bank = the dataset's train split, handcrafted retrieval, the same references for every method of a query. A
variant is ``METHOD/DECODER[/OBJECTS][/MIN_AGREEMENT]`` (defaults: the proposer's). Dice per image, mean per dataset, the
mean of the six datasets v2 never saw (``unseen6``). Embeddings come from the prefetch cache, so the times are
of the proposal itself (map + decoder) with every embedding cached, as in the plugin after the first encoding.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_foundation import machine
from context_data import DATASETS, UNSEEN, banks, common_args, make_retriever, queries, reference_ids

from napari_matchseg.feature_cache import FeatureCache
from napari_matchseg.litemedsam import LiteMedSamPredictor
from napari_matchseg.metrics import dice
from napari_matchseg.proposers.context import ContextProposer
from napari_matchseg.proposers.matchseg import MatchSegPredictor
from napari_matchseg.refiners.litemedsam import LiteMedSamRefiner

DEFAULT_VARIANT = "mean/box"


def context(predictor, spec: str, head: str | None = None) -> ContextProposer:
    """``METHOD/DECODER[/OBJECTS][/MIN_AGREEMENT]``, e.g. ``mean/box/all/0.6``; METHOD ``head`` uses ``head``'s
    weights (``--context-head``)."""
    method, decoder, *rest = spec.split("/")
    extra = {"head": head} if method == "head" else {}
    for part in rest:
        if part in ("all", "references"):
            extra["objects"] = part
        else:
            extra["min_agreement"] = float(part)
    return ContextProposer(model=predictor, method=method, decoder=decoder, **extra)


def supports(bank, foreign, rid, img, kind, k, retriever=None):
    b = foreign if kind == "foreign" else bank
    ids = reference_ids(bank, img, rid, kind, k, foreign, retriever)
    return [b.load_image(i) for i in ids], [b.load_mask(i) for i in ids]


def run_dataset(args, name, predictor, v2, refiner, retriever=None) -> dict:
    bank, foreign = banks(args.data, args.work, name)
    rows: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    proposers = {}

    def score(label, fn, gt):
        t = time.perf_counter()
        prob = fn()
        times.setdefault(label, []).append(time.perf_counter() - t)
        rows.setdefault(label, []).append(dice(prob >= 0.5, gt))
        return prob

    for rid, img, gt in queries(args.data, name, args.split, args.n):
        predictor.embedding(img)  # cached by the prefetch step
        if args.table == "main":
            s_img, s_mask = supports(bank, foreign, rid, img, "retrieved", args.k, retriever)
            if not args.no_v2:
                p2 = score("v2", lambda: v2.predict(img, s_img, s_mask), gt)
                r = refiner.refine(img, p2)
                rows.setdefault("v2+litemedsam", []).append(dice(r.mask, gt))
            for spec in args.variants:
                prop = proposers.setdefault(spec, context(predictor, spec, args.context_head))
                score(f"context {spec}", lambda: prop.predict(img, s_img, s_mask), gt)
        elif args.table == "k":
            prop = proposers.setdefault(args.variant, context(predictor, args.variant, args.context_head))
            for k in (1, 4, 8, 16):
                s_img, s_mask = supports(bank, foreign, rid, img, "retrieved", k, retriever)
                score(f"context k={k}", lambda: prop.predict(img, s_img, s_mask), gt)
        else:  # refs: retrieved vs random vs foreign
            prop = proposers.setdefault(args.variant, context(predictor, args.variant, args.context_head))
            for kind in ("retrieved", "random", "foreign"):
                s_img, s_mask = supports(bank, foreign, rid, img, kind, args.k, retriever)
                score(f"context {kind}", lambda: prop.predict(img, s_img, s_mask), gt)
                score(f"v2 {kind}", lambda: v2.predict(img, s_img, s_mask), gt)
    return {"n": len(next(iter(rows.values()))), "dice": {k: float(np.mean(v)) for k, v in rows.items()},
            "ms": {k: 1000 * float(np.median(v)) for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    common_args(ap, "val", 10)
    ap.add_argument("-k", type=int, default=8)
    ap.add_argument("--table", default="main", choices=("main", "k", "refs"))
    ap.add_argument("--variants", nargs="+", default=["mean/none", DEFAULT_VARIANT])
    ap.add_argument("--variant", default=DEFAULT_VARIANT, help="the context variant of the k and refs tables")
    ap.add_argument("--context-head", help="the trained head's weights, for variants of method 'head'")
    ap.add_argument("--no-v2", action="store_true", help="main table: leave out v2 and v2 + LiteMedSAM")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = LiteMedSamPredictor("cpu")
    predictor.attach_cache(FeatureCache(args.work, predictor.model_id))
    v2 = MatchSegPredictor(None, device="cpu")
    refiner = LiteMedSamRefiner(model=predictor)
    retriever = make_retriever(args.retriever, predictor)
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}", flush=True)
    results = {}
    for name in args.datasets:
        t = time.time()
        results[name] = run_dataset(args, name, predictor, v2, refiner, retriever)
        cells = "  ".join(f"{k} {v:.3f}" for k, v in results[name]["dice"].items())
        print(f"{name} (n={results[name]['n']}, {time.time() - t:.0f} s, {predictor.encodings} encoded): {cells}",
              flush=True)
    labels = list(next(iter(results.values()))["dice"])
    summary = {}
    for group, names in (("unseen6", UNSEEN), ("all9", DATASETS)):
        have = [n for n in names if n in results]
        if len(have) == len(names):
            summary[group] = {lab: float(np.mean([results[n]["dice"][lab] for n in have])) for lab in labels}
    print("\n| dataset | " + " | ".join(labels) + " |\n|---|" + "---:|" * len(labels))
    for name, r in [*results.items(), *((g, {"dice": s}) for g, s in summary.items())]:
        print(f"| {name} | " + " | ".join(f"{r['dice'][lab]:.3f}" for lab in labels) + " |")
    ms = {lab: float(np.median([r["ms"][lab] for r in results.values() if lab in r["ms"]]))
          for lab in labels if any(lab in r["ms"] for r in results.values())}
    print("median ms per proposal (embeddings cached): " + ", ".join(f"{k} {v:.0f}" for k, v in ms.items()))
    if args.json:
        out = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "datasets": results,
               "summary": summary, "median_ms": ms}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
