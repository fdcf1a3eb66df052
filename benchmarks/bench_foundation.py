"""Foundation benchmark: embedding throughput, top-k latency, bank open time.

    .venv/bin/python benchmarks/bench_foundation.py [--quick] [--json out.json]

Prints markdown tables with the machine they ran on. CLIP and DINOv2 throughput is measured on the
real architectures with random weights (no download is possible here): speed does not depend on the
weight values. DINOv2 ViT-S/14 is timm's ``vit_small_patch14_dinov2``, the same network as the hub's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_matchseg._compat import avoid_triton_llvm_clash  # noqa: E402
from napari_matchseg.bank import ReferenceBank  # noqa: E402
from napari_matchseg.retrieval import l2_normalize, top_k  # noqa: E402
from napari_matchseg.tensors import run_encoder, to_batch  # noqa: E402
from napari_matchseg.retrieval.handcrafted import HandcraftedRetriever  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} logical cores, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, numpy {np.__version__}")


def load_images(n: int) -> tuple[list[np.ndarray], str]:
    from napari_matchseg.image_io import read_image

    data = REPO.parent / "shared" / "data" / "busi" / "images"
    if data.is_dir():
        files = sorted(data.glob("*.png"))[:n]
        return [read_image(f) for f in files], f"BUSI images ({len(files)}, longest side 256)"
    from napari_matchseg.sample_data import make_sample

    imgs = [t[1] for t in make_sample("ultrasound", n)]
    return imgs, f"generated sample images ({n}, 160 x 160)"


def throughput(name: str, embed, images, repeats: int = 1) -> dict:
    embed(images[:4])  # warm-up (model build, caches)
    t = time.perf_counter()
    for _ in range(repeats):
        embed(images)
    dt = (time.perf_counter() - t) / repeats
    return {"retriever": name, "images": len(images), "images_per_s": len(images) / dt}


def neural(model: torch.nn.Module, size: int, mean, std):
    model.eval()

    def embed(images):
        for i in range(0, len(images), 16):
            run_encoder(model, to_batch(images[i:i + 16], size, mean, std, torch.device("cpu")))
    return embed


def bench_throughput(images) -> list[dict]:
    avoid_triton_llvm_clash()
    import open_clip
    import timm

    rows = [throughput("handcrafted (HOG+LBP+histograms)", HandcraftedRetriever().embed, images)]
    clip = open_clip.create_model("ViT-B-32", pretrained=None)
    rows.append(throughput("clip ViT-B-32 (open_clip, 224 px)", neural(clip.visual, 224, (0.48, 0.46, 0.41),
                                                                      (0.27, 0.26, 0.28)), images))
    dino = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224, num_classes=0)
    rows.append(throughput("dinov2 ViT-S/14 (224 px)", neural(dino, 224, (0.485, 0.456, 0.406),
                                                             (0.229, 0.224, 0.225)), images))
    return rows


def bench_topk(sizes, dims, repeats=50) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for d in dims:
        for n in sizes:
            v = l2_normalize(rng.normal(size=(n, d)).astype(np.float32))
            qs = l2_normalize(rng.normal(size=(repeats, d)).astype(np.float32))
            times = []
            for q in qs:
                t = time.perf_counter()
                top_k(v, q, 8)
                times.append(time.perf_counter() - t)
            rows.append({"references": n, "dim": d, "median_ms": 1e3 * statistics.median(times),
                         "p95_ms": 1e3 * float(np.percentile(times, 95))})
    return rows


def bench_open(n: int, repeats: int = 7) -> dict:
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        bank = ReferenceBank.create(Path(tmp) / "bank")
        mask = np.zeros((32, 32), bool)
        mask[8:20, 8:20] = True
        t = time.perf_counter()
        bank.add_many(((rng.integers(0, 256, (32, 32), dtype=np.uint8), mask, f"img{i:05d}") for i in range(n)),
                      commit_every=1000)
        build_s = time.perf_counter() - t
        store = bank.embedding_store("bench-512")
        store.add([r.image_sha256 for r in bank], l2_normalize(rng.normal(size=(n, 512)).astype(np.float32)))
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            b = ReferenceBank.open(bank.path)
            vecs = b.embedding_store("bench-512").get([r.image_sha256 for r in b])
            top_k(vecs, vecs[0], 8)
            times.append(time.perf_counter() - t)
        single = []
        for i in range(5):  # interactive adds into a bank of this size
            t = time.perf_counter()
            b.add(rng.integers(0, 256, (32, 32), dtype=np.uint8), mask, name=f"late{i}")
            single.append(time.perf_counter() - t)
    return {"references": n, "open_median_s": statistics.median(times), "open_max_s": max(times),
            "bulk_add_s": build_s, "single_add_median_s": statistics.median(single)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer images and no 100k bank (smoke run)")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    images, source = load_images(16 if args.quick else 64)
    print(f"machine: {machine()}\n")
    thr = bench_throughput(images)
    print(f"### Embedding throughput (CPU, batch 16, {source})\n")
    print("| retriever | images/s |\n|---|---:|")
    for r in thr:
        print(f"| {r['retriever']} | {r['images_per_s']:.1f} |")
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    tk = bench_topk(sizes, (448, 512, 384))
    print("\n### Top-k latency (k = 8, cosine, one query, 50 queries)\n")
    print("| references | dim | median ms | p95 ms |\n|---:|---:|---:|---:|")
    for r in tk:
        print(f"| {r['references']:,} | {r['dim']} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} |")
    op = bench_open(1_000 if args.quick else 10_000)
    print(f"\n### Bank of {op['references']:,} references (32 x 32 images, 512-d embeddings cached)\n")
    print("| open + load embeddings + one top-k (median) | worst of 7 | bulk add (all) | one more add |")
    print("|---:|---:|---:|---:|")
    print(f"| {op['open_median_s'] * 1e3:.0f} ms | {op['open_max_s'] * 1e3:.0f} ms | {op['bulk_add_s']:.1f} s "
          f"| {op['single_add_median_s'] * 1e3:.0f} ms |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "throughput": thr, "topk": tk, "open": op},
                                              indent=1))


if __name__ == "__main__":
    main()
