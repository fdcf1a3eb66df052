"""The ``medsam`` retriever (LiteMedSAM embeddings, three poolings) against ``handcrafted``, on every shared dataset.

    .venv/bin/python benchmarks/bench_medsam_retriever.py --splits val test --bank 150 --queries 30 \
        --json benchmarks/results/medsam_retriever.json

Per dataset: a bank of ``--bank`` train images (every n-th, so all of the split's range is drawn from) and
``--queries`` images of each split. For each retriever:
  * label agreement: the fraction of a query's top-8 references in the query's group (datasets with groups in
    their manifest: busi benign/malignant/normal, wbc d1/d2, covidqu_lungs, lgg_flair institution, dsb2018_nuclei
    modality); the chance level (the bank's group frequencies) is printed beside it;
  * downstream Dice: the shipped MatchSeg with that retriever's top-8 as supports (queries with an empty mask are
    left out of the mean, as elsewhere).
Also the cost per image of each retriever's embedding. Choose the pooling on ``val``, report on ``test``.
Embeddings are kept in ``--work`` (one file per dataset), so a run that is stopped resumes where it was.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402
from bench_litemedsam import DATASETS  # noqa: E402

from napari_matchseg.image_io import read_image, read_mask  # noqa: E402
from napari_matchseg.litemedsam import LiteMedSamPredictor  # noqa: E402
from napari_matchseg.metrics import dice  # noqa: E402
from napari_matchseg.proposers.matchseg import MatchSegPredictor  # noqa: E402
from napari_matchseg.retrieval import l2_normalize, top_k  # noqa: E402
from napari_matchseg.retrieval.handcrafted import HandcraftedRetriever  # noqa: E402
from napari_matchseg.retrieval.medsam import POOLINGS, pool  # noqa: E402

RETRIEVERS = ("handcrafted", *(f"medsam-{p}" for p in POOLINGS))
K = 8


def manifest(data: Path, name: str) -> list[dict]:
    with open(data / name / "manifest.csv") as f:
        return list(csv.DictReader(f))


def spread(rows: list[dict], n: int) -> list[dict]:
    return rows if len(rows) <= n else [rows[int(i * len(rows) / n)] for i in range(n)]


class Embeddings:
    """Every retriever's vector of an image, computed once and kept in ``work/<dataset>-<id>.npy`` rows."""

    def __init__(self, work: Path, predictor: LiteMedSamPredictor):
        self.work, self.predictor, self.handcrafted = work, predictor, HandcraftedRetriever()
        self.seconds = {"handcrafted": [], "medsam": []}

    def get(self, data: Path, name: str, rid: str) -> dict[str, np.ndarray]:
        f = self.work / f"{name}-{rid}.npz"
        if f.is_file():
            with np.load(f) as z:
                return {k: z[k] for k in RETRIEVERS}
        img = read_image(data / name / "images" / f"{rid}.png")
        t = time.perf_counter()
        out = {"handcrafted": self.handcrafted.features(img)}
        self.seconds["handcrafted"].append(time.perf_counter() - t)
        t = time.perf_counter()
        emb = self.predictor.embedding(img)
        pooled = {f"medsam-{p}": pool(emb.features, emb.scaled, p) for p in POOLINGS}
        self.seconds["medsam"].append(time.perf_counter() - t)
        out.update(pooled)
        tmp = f.with_suffix(".tmp.npz")
        np.savez(tmp, **out)
        tmp.replace(f)
        return out


def run_dataset(data: Path, name: str, splits, n_bank: int, n_queries: int, emb: Embeddings,
                matchseg: MatchSegPredictor) -> dict:
    rows = manifest(data, name)
    bank_rows = spread([r for r in rows if r["split"] == "train"], n_bank)
    bank_vecs = {r: l2_normalize(np.stack([emb.get(data, name, b["id"])[r] for b in bank_rows])) for r in RETRIEVERS}
    bank_groups = np.array([b["group"] for b in bank_rows])
    grouped = len(set(bank_groups)) > 1
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def pair(rid):
        if rid not in cache:
            img = read_image(data / name / "images" / f"{rid}.png")
            cache[rid] = img, read_mask(data / name / "masks" / f"{rid}.png", img.shape, allow_full=True)
        return cache[rid]

    out = {"bank": len(bank_rows), "grouped": grouped}
    for split in splits:
        queries = spread([r for r in rows if r["split"] == split], n_queries)
        res = {r: {"agreement": [], "dice": []} for r in RETRIEVERS}
        for q in queries:
            vec = emb.get(data, name, q["id"])
            img, gt = pair(q["id"])
            for r in RETRIEVERS:
                idx, _ = top_k(bank_vecs[r], l2_normalize(vec[r]), K)
                if grouped:
                    res[r]["agreement"].append(float(np.mean(bank_groups[idx] == q["group"])))
                if gt.any():
                    sup = [pair(bank_rows[i]["id"]) for i in idx]
                    prob = matchseg.predict(img, [s[0] for s in sup], [s[1] for s in sup])
                    res[r]["dice"].append(dice(prob >= 0.5, gt))
        chance = float(np.mean([np.mean(bank_groups == q["group"]) for q in queries])) if grouped else None
        out[split] = {"queries": len(queries), "chance_agreement": chance,
                      **{r: {k: (round(float(np.mean(v)), 4) if v else None) for k, v in m.items()}
                         for r, m in res.items()}}
        line = " ".join(f"{r} agree {out[split][r]['agreement']} dice {out[split][r]['dice']}" for r in RETRIEVERS)
        print(f"{name} {split} (chance {chance}): {line}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--work", default="/tmp/matchseg-medsam-retriever")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    ap.add_argument("--bank", type=int, default=150)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}, {torch.get_num_threads()} torch threads", flush=True)
    emb = Embeddings(work, LiteMedSamPredictor("auto"))
    matchseg = MatchSegPredictor(None, device="auto")
    results = {"machine": machine(), "threads": torch.get_num_threads(), "k": K, "datasets": {}}
    for name in args.datasets:
        results["datasets"][name] = run_dataset(data, name, args.splits, args.bank, args.queries, emb, matchseg)
    results["ms_per_image"] = {k: round(1000 * float(np.median(v)), 1) if v else None
                               for k, v in emb.seconds.items()}
    for split in args.splits:
        for r in RETRIEVERS:
            d = [v[split][r]["dice"] for v in results["datasets"].values() if v[split][r]["dice"] is not None]
            a = [v[split][r]["agreement"] for v in results["datasets"].values() if v[split][r]["agreement"] is not None]
            results.setdefault("mean", {}).setdefault(split, {})[r] = {
                "dice": round(float(np.mean(d)), 4), "agreement": round(float(np.mean(a)), 4) if a else None}
        print(f"mean {split}: {results['mean'][split]}", flush=True)
    print(f"median ms per image (embeddings computed in this run): {results['ms_per_image']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
