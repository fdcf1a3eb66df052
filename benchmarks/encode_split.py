"""Encode a dataset split's images with LiteMedSAM once, into a cache that later runs share (resumable).

    .venv/bin/python benchmarks/encode_split.py --dataset busi [--split train] [--cache DIR]
    .venv/bin/python benchmarks/encode_split.py --dataset busi kvasir wbc --split train val \
        --cache ~/.cache/napari-matchseg/bench-context        # the in-context head's training set (issue 36)

The files are ``DIR/features/<litemedsam id>/<image sha256>.npy`` (float16), the layout ``run_semi(...,
features_dir=DIR)`` and ``matchseg semi --embeddings DIR`` read: an image already there is skipped, so a cut-off
run continues where it stopped, and every draw of the SAM-Match protocol (``sam_match_protocol.sh``) reuses them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402

from napari_matchseg.feature_cache import FeatureCache  # noqa: E402
from napari_matchseg.image_io import read_image  # noqa: E402
from napari_matchseg.litemedsam import LiteMedSamPredictor  # noqa: E402
from napari_matchseg.training.data import read_manifest  # noqa: E402
from napari_matchseg.training.train import GROUPS  # noqa: E402

DEFAULT_CACHE = Path.home() / ".cache" / "napari-matchseg" / "sam-match"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--dataset", nargs="+", default=["busi"])
    ap.add_argument("--split", nargs="+", default=["train"])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    predictor = LiteMedSamPredictor(args.device)
    predictor.attach_cache(FeatureCache(args.cache, predictor.model_id))
    t, total = time.time(), 0
    for dataset in args.dataset:
        for split in args.split:
            ids = read_manifest(args.data, dataset, split, GROUPS.get(dataset))
            total += len(ids)
            for n, r in enumerate(ids, 1):
                predictor.embedding(read_image(args.data / dataset / "images" / f"{r}.png"))
                if n % 50 == 0 or n == len(ids):
                    print(f"{dataset}/{split}: {n}/{len(ids)} images, {predictor.encodings} encoded so far, "
                          f"{time.time() - t:.0f} s", flush=True)
    per = (time.time() - t) / max(predictor.encodings, 1)
    print(f"{predictor.encodings} encoded ({per:.2f} s each, encoder runtime {predictor.runtime}), "
          f"{total - predictor.encodings} already cached; machine: {machine()}")


if __name__ == "__main__":
    main()
