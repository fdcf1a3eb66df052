"""MatchSeg speed: FLOPs, proposal latency (retrieval + network, supports cached), training steps/s.

    .venv/bin/python benchmarks/bench_matchseg.py [--checkpoint PATH] [--queries 30] [--device auto] [--json FILE]

Latency is for one proposal as the plugin makes it: embed the query with the handcrafted retriever, top-k
over the bank's cached vectors, then MatchSeg with the k supports' features already cached (the first use
of a reference computes them once; that cost is reported separately).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402

from napari_matchseg.bank import ReferenceBank  # noqa: E402
from napari_matchseg.checkpoint import DEFAULT_CHECKPOINT  # noqa: E402
from napari_matchseg.proposers.matchseg import MatchSegPredictor  # noqa: E402
from napari_matchseg.propose import propose  # noqa: E402
from napari_matchseg.retrieval import get_retriever  # noqa: E402


def flops(model, k: int, size: int) -> tuple[float, float]:
    q = torch.rand(1, 3, size, size)
    si, sm = torch.rand(1, k, 3, size, size), (torch.rand(1, k, 1, size, size) > 0.5).float()
    with torch.no_grad():
        sup = model.encode_supports(si, sm)
        fq = FlopCounterMode(display=False)
        with fq:
            model.decode(q, sup)
        fs = FlopCounterMode(display=False)
        with fs:
            model.encode_supports(si[:, :1], sm[:, :1])
    return fq.get_total_flops() / 1e9, fs.get_total_flops() / 1e9


def bank_and_queries(n_queries: int, tmp: Path):
    from napari_matchseg.image_io import read_image, read_mask
    from napari_matchseg.training.data import read_manifest

    data = REPO.parent / "shared" / "data"
    bank = ReferenceBank.create(tmp / "bank")
    if (data / "busi" / "manifest.csv").is_file():
        ids = read_manifest(data, "busi", "train", ("benign", "malignant"))
        def load(rid):
            img = read_image(data / "busi" / "images" / f"{rid}.png")
            return img, read_mask(data / "busi" / "masks" / f"{rid}.png", img.shape), rid
        bank.add_many(load(r) for r in ids)
        queries = [read_image(data / "busi" / "images" / f"{r}.png")
                   for r in read_manifest(data, "busi", "test", ("benign", "malignant"))[:n_queries]]
        return bank, queries, f"BUSI: bank = {len(bank)} train images, {len(queries)} test queries"
    from napari_matchseg.sample_data import make_sample

    triples = make_sample("ultrasound", 40 + n_queries)
    bank.add_many((img, m, name) for name, img, m in triples[:40])
    return bank, [t[1] for t in triples[40:]], f"generated sample: bank = 40, {n_queries} queries"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("-k", type=int, default=8)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    ckpt = args.checkpoint or (DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.is_file() else None)
    if ckpt is None:
        raise SystemExit("no checkpoint: pass --checkpoint (latency does not depend on the weights)")
    predictor = MatchSegPredictor(ckpt, device=args.device)
    model, size = predictor.model, predictor.size
    gq, gs = flops(model.cpu(), args.k, size)
    model.to(predictor.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"machine: {machine()}\ndevice: {predictor.device}\n")
    print(f"MatchSeg: {n_params / 1e6:.2f} M parameters, working size {size}, k = {args.k}")
    print(f"FLOPs: {gq:.3f} GFLOPs per query (supports cached), {gs:.3f} GFLOPs per support (once per reference)\n")
    retriever = get_retriever("handcrafted")
    with tempfile.TemporaryDirectory() as tmp:
        bank, queries, source = bank_and_queries(args.queries, Path(tmp))
        bank.embeddings(retriever)
        t = time.perf_counter()
        for q in queries:  # first pass: support features computed (and cached in the bank) on first use
            propose(bank, q, retriever=retriever, predictor=predictor, k=args.k)
        first = (time.perf_counter() - t) / len(queries)
        times, t_ret = [], []
        for q in queries:
            t0 = time.perf_counter()
            propose(bank, q, retriever=retriever, predictor=predictor, k=args.k)
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            retriever.embed_one(q)
            t_ret.append(time.perf_counter() - t0)
        predictor.mirror_tta, t_mirror = True, []  # the same proposals with the test-time mirror
        for q in queries:
            t0 = time.perf_counter()
            propose(bank, q, retriever=retriever, predictor=predictor, k=args.k)
            t_mirror.append(time.perf_counter() - t0)
        predictor.mirror_tta = False
        n_feats = len(list((bank.path / "features").rglob("*.npy")))
    print(f"### Proposal latency ({source})\n")
    print("| proposal (retrieval + MatchSeg, supports cached) | of which query embedding | first use (supports "
          "computed) | with --mirror-tta | support features cached |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| median {statistics.median(times) * 1e3:.0f} ms (p90 {np.percentile(times, 90) * 1e3:.0f} ms) | "
          f"{statistics.median(t_ret) * 1e3:.0f} ms | {first * 1e3:.0f} ms mean | "
          f"median {statistics.median(t_mirror) * 1e3:.0f} ms | {n_feats} |")

    from napari_matchseg.modeling import MatchSeg
    from napari_matchseg.training.losses import segmentation_loss

    train_model = MatchSeg(model.config).to(predictor.device).train()
    opt = torch.optim.AdamW(train_model.parameters(), 1e-3)
    b, k = 8, 4
    dev = predictor.device
    q = torch.rand(b, 3, size, size, device=dev)
    si = torch.rand(b, k, 3, size, size, device=dev)
    sm = (torch.rand(b, k, 1, size, size, device=dev) > 0.5).float()
    y = (torch.rand(b, 1, size, size, device=dev) > 0.5).float()
    steps = []
    for i in range(6):
        t0 = time.perf_counter()
        loss = segmentation_loss(train_model(q, si, sm), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            steps.append(time.perf_counter() - t0)
    print(f"\ntraining: {1 / statistics.median(steps):.2f} steps/s at batch {b} episodes x k = {k} supports "
          "(network only, no data loading)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine(), "device": str(predictor.device), "threads": torch.get_num_threads(),
            "source": source, "k": args.k, "working_size": size, "parameters": n_params,
            "gflops_per_query": round(gq, 3), "gflops_per_support": round(gs, 3),
            "proposal_ms_median": round(statistics.median(times) * 1e3, 1),
            "proposal_ms_p90": round(float(np.percentile(times, 90)) * 1e3, 1),
            "query_embedding_ms_median": round(statistics.median(t_ret) * 1e3, 1),
            "first_use_ms_mean": round(first * 1e3, 1),
            "proposal_mirror_tta_ms_median": round(statistics.median(t_mirror) * 1e3, 1),
            "train_steps_per_second": round(1 / statistics.median(steps), 3),
            "train_batch": {"episodes": b, "k": k}}, indent=1))


if __name__ == "__main__":
    main()
