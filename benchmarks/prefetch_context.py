"""Encode, once, every image bench_context.py needs with LiteMedSAM (resumable: cached files are skipped).

    .venv/bin/python benchmarks/prefetch_context.py            # val (10/dataset), then test (20/dataset) ...

Stages run in order and each is cheap to repeat: the cache is ``WORK/features/<litemedsam id>/<sha256>.npy``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from context_data import DATASETS, DEFAULT_WORK, REPO, banks, queries, reference_ids

from napari_matchseg.feature_cache import FeatureCache
from napari_matchseg.litemedsam import LiteMedSamPredictor

# (split, queries per dataset, [(reference kind, k)])
STAGES = (("val", 10, [("retrieved", 8)]), ("test", 20, [("retrieved", 8)]),
          ("test", 10, [("retrieved", 16), ("random", 8), ("foreign", 8)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--stages", type=int, nargs="+", default=list(range(len(STAGES))))
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    args = ap.parse_args()
    predictor = LiteMedSamPredictor("cpu")
    predictor.attach_cache(FeatureCache(args.work, predictor.model_id))
    for s in args.stages:
        split, n, kinds = STAGES[s]
        for name in args.datasets:
            bank, foreign = banks(args.data, args.work, name)
            t, before = time.time(), predictor.encodings
            for rid, img, _ in queries(args.data, name, split, n):
                predictor.embedding(img)
                for kind, k in kinds:
                    b = foreign if kind == "foreign" else bank
                    for ref in reference_ids(bank, img, rid, kind, k, foreign):
                        predictor.embedding(b.load_image(ref))
            done = predictor.encodings - before
            print(f"stage {s} {split} {name}: {done} encoded in {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
