"""Throughput of ``matchseg segment`` plain and on Dask, on this machine, with outputs checked against the plain run.

    .venv/bin/python benchmarks/bench_dask.py --json benchmarks/results/dask_batch.json

A bank of ``--bank`` BUSI train images (benign and malignant: their masks are not empty); ``--images`` real BUSI
images to segment (the 155 of the test split, then val images up to the number), linked into a work folder. Each
variant is one ``matchseg segment`` command, timed from start to exit (imports, model loading, the cluster's
start-up included, as a user sees it):
  * plain: the loop in one process (torch on every core);
  * ``--dask local:1`` (one worker process with every core's threads: the fair comparison for Dask's overhead);
  * ``--dask local:2`` (two worker processes of one thread each);
  * ``--dask tcp://127.0.0.1:PORT`` against ``dask scheduler`` + two ``dask worker --nthreads 1`` processes started
    here from the command line before the timing (a cluster that is already running, as on a SLURM allocation).
Every variant's masks must be byte-identical to the plain run's; the script says which are not.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402

BIN = Path(sys.executable).parent


def busi_rows(data: Path) -> dict[str, list[str]]:
    with open(data / "busi" / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    ids = {s: [r["id"] for r in rows if r["split"] == s] for s in ("val", "test")}
    ids["train"] = [r["id"] for r in rows if r["split"] == "train" and r["group"] != "normal"]  # masks not empty
    return ids


def prepare(data: Path, work: Path, n_bank: int, n_images: int) -> tuple[Path, Path]:
    ids = busi_rows(data)
    images = work / "images"
    if not images.exists():
        images.mkdir(parents=True)
        for rid in (ids["test"] + ids["val"])[:n_images]:
            os.symlink(data / "busi" / "images" / f"{rid}.png", images / f"{rid}.png")
    bank = work / "bank"
    if not bank.exists():
        src = work / "bank-src"
        for sub in ("images", "masks"):
            (src / sub).mkdir(parents=True, exist_ok=True)
        train = ids["train"]
        for i in range(n_bank):
            rid = train[int(i * len(train) / n_bank)]
            for sub in ("images", "masks"):
                os.symlink(data / "busi" / sub / f"{rid}.png", src / sub / f"{rid}.png")
        subprocess.run([BIN / "matchseg", "bank", "add", bank, "--images", src / "images", "--masks", src / "masks"],
                       check=True)
    return bank, images


def timed_segment(bank: Path, images: Path, out: Path, extra: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([BIN / "matchseg", "segment", "--bank", bank, "--images", images, "--out", out, *extra],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"segment {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def identical(out: Path, plain: Path) -> bool:
    a, b = sorted(p.name for p in out.iterdir()), sorted(p.name for p in plain.iterdir())
    return a == b and all((out / n).read_bytes() == (plain / n).read_bytes() for n in a)


def start_cluster(logs: Path, workers: int = 2) -> tuple[str, list[subprocess.Popen]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    log = open(logs / "cluster.log", "w")
    procs = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)]
    for _ in range(workers):
        procs.append(subprocess.Popen([BIN / "dask", "worker", address, "--nthreads", "1", "--no-dashboard",
                                       "--memory-limit", "0"], stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(workers, timeout=120)
    return address, procs


def stop_cluster(procs: list[subprocess.Popen]) -> None:
    for p in procs[::-1]:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--bank", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=1, help="timings per variant (the fastest is reported)")
    ap.add_argument("--segment-options", default="", help="more options for every segment command, e.g. "
                    "'--refine litemedsam' (LiteMedSAM's encoder on every image: about a second per image)")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-dask-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bank, images = prepare(args.data, work, args.bank, args.images)
        n = len(list(images.iterdir()))
        more = args.segment_options.split()
        variants: dict[str, list[str]] = {"plain": more, "local:1": [*more, "--dask", "local:1"],
                                          "local:2": [*more, "--dask", "local:2"]}
        address, procs = start_cluster(work)
        variants["scheduler + 2 workers"] = [*more, "--dask", address]
        try:
            seconds = {name: min(timed_segment(bank, images, work / f"out-{i}", extra)
                                 for _ in range(args.repeats)) for i, (name, extra) in enumerate(variants.items())}
        finally:
            stop_cluster(procs)
        plain = work / "out-0"
        rows = {name: {"seconds": round(s, 2), "images_per_s": round(n / s, 3),
                       "vs_plain": round(s / seconds["plain"] - 1, 4),
                       "identical_to_plain": identical(work / f"out-{i}", plain)}
                for i, (name, s) in enumerate(seconds.items())}
        result = {"machine": machine(), "images": n, "bank": args.bank, "repeats": args.repeats,
                  "proposer": "matchseg (shipped v2), handcrafted retrieval, k = 8",
                  "segment_options": args.segment_options,
                  "overhead_local1_vs_plain": rows["local:1"]["vs_plain"], "variants": rows}
        print(f"{n} BUSI images, bank {args.bank}, {args.segment_options or 'default options'}; {result['machine']}")
        for name, r in rows.items():
            print(f"  {name:>22}: {r['seconds']:7.1f} s  {r['images_per_s']:6.2f} images/s  "
                  f"{100 * r['vs_plain']:+6.1f} % vs plain  identical: {r['identical_to_plain']}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        return 0 if all(r["identical_to_plain"] for r in rows.values()) else 1
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
