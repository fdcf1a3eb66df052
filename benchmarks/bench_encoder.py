"""LiteMedSAM's image encoder: every way to run it on this CPU, side by side, with its masks' Dice against fp32.

    .venv/bin/python benchmarks/bench_encoder.py --n 25 --json benchmarks/results/encoder_speed.json

Variants (each its own copy of the network, all timed in one run, round-robin per image so that load on the
machine falls on all alike): the plain network in fp32 (as before); the runtimes of
``napari_matchseg.encoder_runtime`` (``fp32``: batch norms folded + channels-last; ``bf16``: the same under bf16
autocast); bf16 autocast on the plain network; ``torch.compile`` (``--compile``, about a minute to compile);
ONNX Runtime fp32 and OpenVINO f32/bf16 where installed. Also the mask decoder (one box prompt on the plain
network's embedding) in fp32 and under bf16 autocast: its time and Dice. Quality: on the first ``--n`` val images
(non-empty masks) of BUSI and Kvasir, LiteMedSAM's mask from one ground-truth box per object, Dice against the ground truth, and the
change against the plain fp32 network. Also the encoder's FLOPs and a floor: FLOPs / the CPU's peak, the peak
assumed as cores x clock x FLOPs per cycle (32 fp32 / 64 bf16 for two 256-bit FMA pipes; printed).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402
from bench_litemedsam import gt_boxes  # noqa: E402

from napari_matchseg.encoder_runtime import (cpu_has_bf16, fold_batch_norms, openvino_encode,
                                                 prepare_encoder)  # noqa: E402
from napari_matchseg.image_io import read_image, read_mask  # noqa: E402
from napari_matchseg.litemedsam import (SIZE, Embedding, LiteMedSamPredictor, build_litemedsam,
                                       preprocess)  # noqa: E402
from napari_matchseg.metrics import dice  # noqa: E402
from napari_matchseg.training.data import read_manifest  # noqa: E402

DATASETS = ("busi", "kvasir")


def variants(with_compile: bool) -> dict:
    """name -> encode(x) -> float32 embedding; each on its own copy of the encoder."""
    base = build_litemedsam("cpu").image_encoder.eval()
    cpu = torch.device("cpu")
    out = {}

    def plain(dtype):
        enc = copy.deepcopy(base)

        def f(x):
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                return enc(x).float()
        return f
    out["plain fp32 (before)"] = plain(None)
    out["runtime fp32 (folded BN, channels-last)"] = prepare_encoder(copy.deepcopy(base), cpu, "fp32")[0]
    if cpu_has_bf16():
        out["plain + bf16 autocast"] = plain(torch.bfloat16)
        out["runtime bf16 (folded, channels-last, bf16 autocast)"] = prepare_encoder(copy.deepcopy(base), cpu,
                                                                                     "bf16")[0]
    if with_compile:
        enc = copy.deepcopy(base)
        fold_batch_norms(enc)
        compiled = torch.compile(enc.to(memory_format=torch.channels_last))

        def run_compiled(x):
            with torch.no_grad():  # (inference_mode tensors cannot pass through compilation)
                return compiled(x.contiguous(memory_format=torch.channels_last)).float()
        out["torch.compile (folded, channels-last, fp32)"] = run_compiled
    try:
        import onnxruntime as ort

        path = Path(tempfile.mkdtemp()) / "encoder.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(copy.deepcopy(base), (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["x"],
                              output_names=["y"], dynamo=False, opset_version=17)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = torch.get_num_threads(), 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        out["onnxruntime fp32"] = lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    except ImportError:
        print("onnxruntime not installed: left out")
    try:
        import openvino  # noqa: F401

        out["openvino f32"] = openvino_encode(copy.deepcopy(base), SIZE, "f32")
        if cpu_has_bf16():
            out["openvino bf16"] = openvino_encode(copy.deepcopy(base), SIZE, "bf16")
    except ImportError:
        print("openvino not installed: left out")
    return out


def encoder_flops() -> int:
    from torch.utils.flop_counter import FlopCounterMode

    enc = build_litemedsam("cpu").image_encoder.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        enc(torch.zeros(1, 3, SIZE, SIZE))
    return int(counter.get_total_flops())


def cpu_clock_ghz() -> float:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    except OSError:
        pass
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("MATCHSEG_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--n", type=int, default=25, help="val images per dataset")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also torch.compile (about a minute to compile)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    runs = variants(args.compile)
    names = list(runs)
    decoder = LiteMedSamPredictor("cpu", runtime="fp32")  # decodes every variant's embedding the same way
    decoders = {"fp32": decoder, "bf16": LiteMedSamPredictor("cpu", model=decoder.model, runtime="fp32")}
    decoders["bf16"].decoder_dtype = torch.bfloat16  # the decoder under bf16 autocast (DECODER_BF16 runtimes)
    decode_ms = {k: [] for k in decoders}
    decode_dice = {k: {d: [] for d in DATASETS} for k in decoders}
    x0 = torch.zeros(1, 3, SIZE, SIZE)
    for f in runs.values():  # warm-up (and compilation)
        f(x0)
        f(x0)
    times = {k: [] for k in names}
    dices = {k: {d: [] for d in DATASETS} for k in names}
    diffs = {k: [] for k in names}
    for name in DATASETS:
        taken = 0
        for rid in read_manifest(data, name, "val"):
            if taken >= args.n:
                break
            img = read_image(data / name / "images" / f"{rid}.png")
            gt = read_mask(data / name / "masks" / f"{rid}.png", img.shape, allow_full=True)
            if not gt.any():
                continue
            taken += 1
            x, scaled = preprocess(img)
            ref = None
            for k in names:
                t = time.perf_counter()
                feats = runs[k](x).float()
                times[k].append(time.perf_counter() - t)
                feats = feats.half().float()  # as the predictor keeps it
                ref = feats if ref is None else ref
                diffs[k].append(float((feats - ref).abs().max()))
                emb = Embedding(feats, tuple(img.shape[:2]), scaled)
                prob, _ = decoder.predict(emb, boxes=gt_boxes(gt))
                dices[k][name].append(dice(prob >= 0.5, gt))
                if k == names[0]:  # the decoders, on the plain fp32 embedding
                    for dk, dec in decoders.items():
                        t = time.perf_counter()
                        prob, _ = dec.predict(emb, boxes=gt_boxes(gt))
                        decode_ms[dk].append(time.perf_counter() - t)
                        decode_dice[dk][name].append(dice(prob >= 0.5, gt))
    flops = encoder_flops()
    ghz = cpu_clock_ghz()
    cores = args.threads
    rows = []
    base_dice = {d: float(np.mean(dices[names[0]][d])) for d in DATASETS}
    for k in names:
        bf16 = "bf16" in k
        peak = cores * ghz * (64 if bf16 else 32)
        row = {"variant": k, "ms_median": round(1000 * float(np.median(times[k])), 1),
               "ms_p90": round(1000 * float(np.percentile(times[k], 90)), 1),
               "floor_ms": round(flops / (peak * 1e9) * 1000, 1),
               "max_abs_embedding_diff": round(float(np.max(diffs[k])), 4)}
        for d in DATASETS:
            m = float(np.mean(dices[k][d]))
            row[f"dice_{d}"] = round(m, 4)
            row[f"delta_{d}"] = round(m - base_dice[d], 4)
        rows.append(row)
    result = {"machine": machine(), "threads": args.threads, "cpu_bf16": cpu_has_bf16(),
              "clock_ghz": round(ghz, 2), "encoder_gflops": round(flops / 1e9, 1),
              "peak_assumption": "threads x clock x 32 FLOP/cycle fp32, 64 bf16",
              "n_per_dataset": args.n, "rows": rows,
              "decoder": {k: {"ms_median": round(1000 * float(np.median(decode_ms[k])), 1),
                              **{f"dice_{d}": round(float(np.mean(decode_dice[k][d])), 4) for d in DATASETS}}
                          for k in decoders}}
    print(f"machine: {result['machine']}; {args.threads} threads; bf16 CPU: {result['cpu_bf16']}; "
          f"encoder {result['encoder_gflops']} GFLOPs")
    for r in rows:
        print(f"{r['variant']:52s} {r['ms_median']:7.1f} ms (p90 {r['ms_p90']:7.1f}, floor {r['floor_ms']:5.1f})  "
              + "  ".join(f"{d} {r[f'dice_{d}']:.4f} ({r[f'delta_{d}']:+.4f})" for d in DATASETS)
              + f"  max|diff| {r['max_abs_embedding_diff']}")
    for k, r in result["decoder"].items():
        print(f"decoder {k}: {r['ms_median']:.1f} ms per box prompt; "
              + "  ".join(f"{d} {r[f'dice_{d}']:.4f}" for d in DATASETS))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
