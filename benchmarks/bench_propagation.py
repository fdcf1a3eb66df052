"""Slice-to-slice propagation on the real FLAIR volumes (issue: volumes and medical formats).

    .venv/bin/python benchmarks/bench_propagation.py --json benchmarks/results/propagation.json

For each volume of ``volumes/lgg_flair_3d`` and each proposer: start from the ground-truth mask of the slice where
the tumour is largest (``one``), or of that slice and the first and last slices with tumour (``three``); propagate
through the whole volume (no bank: only the volume's own slices are references / prompts); report the 3D Dice of the
whole mask volume (given slices included, as a user gets it), the 3D Dice over the slices that were proposed only,
and slices proposed per second (embeddings computed as it goes, nothing cached beforehand; also per slice
processed, the stopping slices included). ``--encoders`` runs each LiteMedSAM encoder runtime
(``MATCHSEG_ENCODER``, see ``napari_matchseg.encoder_runtime``) and ``--ahead on off`` with and without encoding
the next slice on a second thread, side by side in one run:

    .venv/bin/python benchmarks/bench_propagation.py --proposers litemedsam --starts one --threads 2 \
        --encoders fp32 bf16 openvino --ahead off on --json benchmarks/results/propagation_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402

from napari_matchseg.metrics import dice  # noqa: E402
from napari_matchseg.pipeline import Pipeline, PipelineConfig  # noqa: E402
from napari_matchseg.propagation import PROPAGATION_PROPOSER, PropagationSettings, propagate  # noqa: E402
from napari_matchseg.volume_io import read_volume  # noqa: E402


def seeds(gt: np.ndarray, start: str) -> list[int]:
    areas = gt.reshape(len(gt), -1).sum(axis=1)
    largest = int(areas.argmax())
    if start == "one":
        return [largest]
    with_tumour = np.flatnonzero(areas)
    return sorted({largest, int(with_tumour[0]), int(with_tumour[-1])})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--proposers", nargs="+", default=[PROPAGATION_PROPOSER, "matchseg"],
                    help="the first row is the default model of `matchseg propagate` and the dock's Propagate")
    ap.add_argument("--starts", nargs="+", default=["one", "three"], choices=("one", "three"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--encoders", nargs="+", default=["auto"], help="LiteMedSAM encoder runtimes to compare")
    ap.add_argument("--ahead", nargs="+", default=["on"], choices=("on", "off"),
                    help="encode the next slice on a second thread (on) or not (off)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted((args.data / "volumes" / "lgg_flair_3d" / "images").glob("*.nii.gz"))
    if not files:
        raise SystemExit(f"no volumes in {args.data / 'volumes' / 'lgg_flair_3d'}")
    result = {"machine": machine(), "threads": torch.get_num_threads(), "volumes": len(files), "runs": {}}
    runs = [(n, st, enc, ah) for n in args.proposers for st in args.starts for enc in args.encoders
            for ah in args.ahead]
    for name, start, encoder, ahead in runs:
        os.environ["MATCHSEG_ENCODER"] = encoder
        pipeline = Pipeline(PipelineConfig(proposer=name)).load()  # new: no embedding cached from before
        settings = PropagationSettings(encode_ahead=ahead == "on")
        runtime = getattr(pipeline.proposer.shared_model("litemedsam"), "runtime", "-")
        label = f"{name}/{start}" + (f"/{runtime}/ahead-{ahead}" if len(runs) > 1 else "")
        rows = []
        for f in files:
            vol = read_volume(f).data
            gt = read_volume(f.parent.parent / "masks" / f.name).data > 0
            given = seeds(gt, start)
            labels = np.zeros_like(gt)
            labels[given] = gt[given]
            t = time.perf_counter()
            r = propagate(pipeline, vol, labels, settings=settings)
            seconds = time.perf_counter() - t
            proposed = [z for z in range(len(vol)) if z not in given]
            rows.append({"volume": f.name, "slices": len(vol), "tumour_slices": int(gt.any(axis=(1, 2)).sum()),
                         "given": given, "proposed": r.proposed, "dice3d": round(dice(r.mask, gt), 4),
                         "dice3d_proposed_slices": round(dice(r.mask[proposed], gt[proposed]), 4),
                         "seconds": round(seconds, 2),
                         "slices_per_s": round(r.proposed / seconds, 3) if r.proposed else None,
                         "processed": r.proposed + r.status.count("stopped"),
                         "notes": r.notes})
            print(f"{label:>10} {f.name[:22]:22} Dice3D {rows[-1]['dice3d']:.3f} "
                  f"(proposed slices {rows[-1]['dice3d_proposed_slices']:.3f}) {r.proposed:3d} slices "
                  f"{seconds:6.1f} s", flush=True)
        summary = {"mean_dice3d": round(float(np.mean([r["dice3d"] for r in rows])), 4),
                   "mean_dice3d_proposed_slices": round(float(np.mean([r["dice3d_proposed_slices"]
                                                                       for r in rows])), 4),
                   "slices_per_s": round(sum(r["proposed"] for r in rows) / sum(r["seconds"] for r in rows), 3),
                   "processed_per_s": round(sum(r["processed"] for r in rows) / sum(r["seconds"] for r in rows),
                                            3)}
        print(f"{label:>10} mean Dice3D {summary['mean_dice3d']:.3f}, proposed slices "
              f"{summary['mean_dice3d_proposed_slices']:.3f}, {summary['slices_per_s']:.2f} slices/s "
              f"({summary['processed_per_s']:.2f} processed/s)", flush=True)
        result["runs"][label] = {**summary, "rows": rows}
    print(result["machine"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
