"""Kill writers of one bank at random moments and count what was lost, corrupted or left behind.

    .venv/bin/python benchmarks/crash_trials.py --trials 120 [--seed 0] [--json out.json]

Each trial starts one to three writers on the same bank: the Python API (adds, mask edits, removals,
printing each one once it has returned) or the CLI (``matchseg bank add`` of a folder, ``bank remove``),
and sometimes a reader that retrieves meanwhile; after a random delay every writer gets SIGKILL.
At the end the bank is reopened and checked:

* lost:    references a writer reported committed (and nobody reported removing) that are missing;
* corrupt: ``check()`` problems other than orphans (missing files, hashes that do not match);
* orphans: files no record owns, temporaries and journals left after the reopen.

The target is 0 / 0 / 0. ``tests/test_crash_trials.py`` runs a short version of this in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_matchseg.bank import JOURNAL, ReferenceBank  # noqa: E402
from napari_matchseg.fsutil import TMP_MARKER  # noqa: E402

API_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from napari_matchseg.bank import ReferenceBank
    bank = ReferenceBank.open(sys.argv[1], create=True)
    tag, seed = sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(seed)
    mine = []
    for i in range(100000):
        op = rng.random()
        if op < 0.7 or not mine:
            img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            m = np.zeros((64, 64), np.uint8); m[8:40, 8:50] = 1
            if rng.random() < 0.3:
                refs = bank.add_many([(img, m, f"{tag}-{i}")] + [(rng.integers(0, 256, (64, 64), dtype=np.uint8),
                                     m, f"{tag}-{i}b{j}") for j in range(5)], commit_every=4)
                for r in refs:
                    print("add", r.id, flush=True); mine.append(r.id)
            else:
                rid = bank.add(img, m, name=f"{tag}-{i}").id
                print("add", rid, flush=True); mine.append(rid)
        elif op < 0.85:
            m = np.zeros((64, 64), np.uint8); m[int(rng.integers(0, 30)):50, 5:60] = 1
            rid = mine[int(rng.integers(len(mine)))]
            bank.update_mask(rid, m)
            print("update", rid, flush=True)
        else:
            rid = mine.pop(int(rng.integers(len(mine))))
            print("removing", rid, flush=True)
            bank.remove(rid)
            print("remove", rid, flush=True)
""")

READER = textwrap.dedent("""
    import sys, numpy as np
    from napari_matchseg.bank import ReferenceBank
    from napari_matchseg.retrieval import get_retriever, retrieve
    bank = ReferenceBank.open(sys.argv[1], create=True)
    r = get_retriever("handcrafted")
    q = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    while True:
        bank.refresh()
        if len(bank):
            retrieve(bank, r, q, k=3)
""")


def _make_folder(root: Path, n: int, seed: int) -> Path:
    import numpy as np

    from napari_matchseg.image_io import write_image, write_mask

    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        m = np.zeros((64, 64), np.uint8)
        m[4:int(rng.integers(20, 60)), 10:50] = 1
        write_image(root / "images" / f"cli{seed}-{i}.png", rng.integers(0, 256, (64, 64), dtype=np.uint8),
                    overwrite=True)
        write_mask(root / "masks" / f"cli{seed}-{i}.png", m, overwrite=True)
    return root


def _spawn(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, MATCHSEG_OFFLINE="1"))


def run_trials(n: int, work: Path, seed: int = 0, max_delay_s: float = 1.5, log=print) -> dict:
    """``n`` kill trials on one bank in ``work``; returns the counts (see the module docstring)."""
    rnd = random.Random(seed)
    bank_path = work / "bank"
    folders = [_make_folder(work / f"folder{i}", 24, seed * 100 + i) for i in range(3)]
    committed: set[str] = set()
    removed: set[str] = set()
    kills = cli_kills = api_kills = 0
    t0 = time.time()
    for trial in range(n):
        procs = []
        for w in range(rnd.choice((1, 1, 2, 3))):
            if rnd.random() < 0.35:
                folder = rnd.choice(folders)
                kind, args = "cli", ["bank", "add", str(bank_path), "--images", str(folder / "images"),
                                     "--masks", str(folder / "masks")]
                if committed and rnd.random() < 0.3:
                    args = ["bank", "remove", str(bank_path), rnd.choice(sorted(committed - removed) or ["none"])]
                procs.append((kind, args, _spawn([sys.executable, "-m", "napari_matchseg.cli", *args])))
            else:
                procs.append(("api", None, _spawn([sys.executable, "-c", API_WRITER, str(bank_path),
                                                   f"t{trial}w{w}", str(rnd.randrange(1 << 30))])))
        if rnd.random() < 0.3:
            procs.append(("reader", None, _spawn([sys.executable, "-c", READER, str(bank_path)])))
        time.sleep(rnd.uniform(0.3, 0.3 + max_delay_s))
        for kind, args, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
                cli_kills += kind == "cli"
                api_kills += kind == "api"
            out, err = p.communicate()
            if kind == "api":
                for line in out.splitlines():
                    op, _, rid = line.partition(" ")
                    if op == "add":
                        committed.add(rid)
                    elif op in ("remove", "removing"):  # a kill mid-removal may go either way
                        removed.add(rid)
            elif kind == "cli" and args[1] == "remove":
                removed.add(args[-1])
            if p.returncode not in (0, -signal.SIGKILL) and not (kind == "cli" and p.returncode in (1, 2)
                                                                 and "error:" in err):
                raise RuntimeError(f"a {kind} writer failed (exit {p.returncode}): {err[-2000:]}")
        if trial % 10 == 9:
            log(f"  {trial + 1}/{n} trials, {kills} kills, {len(committed)} committed, {time.time() - t0:.0f} s")
    bank = ReferenceBank.open(bank_path)
    present = set(bank.ids())
    lost = sorted(committed - removed - present)
    problems = bank.check()
    corrupt = [p for p in problems if not p.startswith("orphan")]
    leftovers = [p for p in bank_path.rglob("*") if TMP_MARKER in p.name or p.name == JOURNAL]
    orphans = [p for p in problems if p.startswith("orphan")] + [str(p) for p in leftovers]
    return {"trials": n, "kills": kills, "api_kills": api_kills, "cli_kills": cli_kills,
            "committed_reported": len(committed), "references_in_bank": len(present), "lost": len(lost),
            "corrupt": len(corrupt), "orphans_left": len(orphans), "lost_ids": lost[:10], "corrupt_problems":
            corrupt[:10], "orphan_files": orphans[:10], "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", help="folder for the bank (default: a new temporary folder)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="crash-trials-"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; bank in {work}")
    result = run_trials(args.trials, work, args.seed)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
