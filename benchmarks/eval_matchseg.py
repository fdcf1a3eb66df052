"""Results table for the MatchSeg issue: Dice / IoU / HD95 on the test splits, bank = the train split.

    .venv/bin/python benchmarks/eval_matchseg.py --data ../shared/data --work /tmp/matchseg-eval \
        --method universal=default --method universal-random=default:random [--method NAME=CKPT[:OPTION+...]] \
        [--only NAME=DATASET[,DATASET]] [--datasets busi kvasir wbc] [-k 8] [--json results.json]

``{d}`` in a checkpoint path is replaced by the dataset's name (for checkpoints trained on one dataset).
Options after the colon: ``random`` (random supports instead of retrieved ones), ``mirror`` (test-time mirror:
the proposal averages the image's and its mirror image's probabilities), joined by ``+``. ``--only`` restricts
a method to some datasets (its other cells print as "-").

Every method runs through the same code as ``matchseg eval`` (retrieval with the handcrafted retriever,
the proposal, thresholding at 0.5, metrics at the original image size; one Pipeline). BUSI is evaluated on its
benign and malignant test images (the normal ones have empty masks), as in the MatchSeg paper.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402

from napari_matchseg.bank import ReferenceBank  # noqa: E402
from napari_matchseg.pipeline import Pipeline, PipelineConfig, evaluate  # noqa: E402
from napari_matchseg.image_io import read_image, read_mask  # noqa: E402
from napari_matchseg.proposers.matchseg import MatchSegPredictor  # noqa: E402
from napari_matchseg.retrieval import get_retriever  # noqa: E402
from napari_matchseg.training.data import read_manifest  # noqa: E402
from napari_matchseg.training.train import GROUPS  # noqa: E402


def train_bank(data: Path, name: str, work: Path) -> ReferenceBank:
    bank = ReferenceBank.open(work / f"bank-{name}", create=True)
    ids = read_manifest(data, name, "train", GROUPS.get(name))
    if len(bank) < len(ids):
        def items():
            for rid in ids:
                img = read_image(data / name / "images" / f"{rid}.png")
                yield img, read_mask(data / name / "masks" / f"{rid}.png", img.shape), f"{rid}.png"
        bank.add_many(items(), on_duplicate="skip", commit_every=256)
    return bank


def method_predictor(spec: str) -> tuple[MatchSegPredictor, str]:
    """``CHECKPOINT[:random][+mirror]`` -> (predictor, support strategy); "" or "default" = the shipped one."""
    ckpt, _, options = spec.partition(":")
    chosen = set(filter(None, options.split("+")))
    if chosen - {"random", "mirror"}:
        raise SystemExit(f"unknown method options {sorted(chosen - {'random', 'mirror'})} in {spec!r}")
    predictor = MatchSegPredictor(None if ckpt in ("", "default") else ckpt, device="auto",
                                  mirror_tta="mirror" in chosen)
    return predictor, "random" if "random" in chosen else "retrieved"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--work", default="/tmp/matchseg-eval")
    ap.add_argument("--method", action="append", required=True,
                    help="NAME=CHECKPOINT[:random][+mirror]; default = shipped")
    ap.add_argument("--only", action="append", default=[], help="NAME=DATASET[,DATASET]: run NAME only there")
    ap.add_argument("--datasets", nargs="+", default=["busi", "kvasir", "wbc"])
    ap.add_argument("-k", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    retriever = get_retriever("handcrafted")
    results = {}
    only = {n: set(ds.split(",")) for n, _, ds in (o.partition("=") for o in args.only)}
    for name in args.datasets:
        bank = train_bank(data, name, work)
        test = read_manifest(data, name, "test", GROUPS.get(name))
        pairs = [(data / name / "images" / f"{r}.png", data / name / "masks" / f"{r}.png") for r in test]
        for spec in args.method:
            label, _, ckpt = spec.partition("=")
            if name not in only.get(label, {name}):
                continue
            predictor, support = method_predictor(ckpt.format(d=name))
            pipeline = Pipeline(PipelineConfig(k=args.k, support=support), retriever=retriever, proposer=predictor)
            t = time.time()
            r = evaluate(pipeline, bank, pairs)
            r["seconds"] = round(time.time() - t, 1)
            results.setdefault(name, {})[label] = r
            print(f"{name:7s} {label:24s} Dice {r['dice_mean']:.4f} +- {r['dice_std']:.4f}  IoU {r['iou_mean']:.4f}"
                  f"  HD95 {r['hd95_mean']:.1f}  n={r['n']}  ({r['seconds']} s)", flush=True)
    print(f"\nmachine: {machine()}\n")
    labels = [s.partition("=")[0] for s in args.method]
    print("| method | " + " | ".join(f"{d} Dice | {d} IoU" for d in args.datasets) + " |")
    print("|---|" + "---:|---:|" * len(args.datasets))
    for label in labels:
        cells = []
        for d in args.datasets:
            r = results[d].get(label)
            cells += [f"{r['dice_mean']:.3f} +- {r['dice_std']:.3f}", f"{r['iou_mean']:.3f}"] if r else ["-", "-"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        slim = {d: {m: {k: v for k, v in r.items() if k != "rows"} for m, r in ms.items()} for d, ms in results.items()}
        Path(args.json).write_text(json.dumps({"machine": machine(), "k": args.k, "results": slim}, indent=1))


if __name__ == "__main__":
    main()
