"""The adversarial suite: crafted banks, bad inputs, concurrent writers and kills, in one command, with counts.

    .venv/bin/python benchmarks/adversarial.py --json benchmarks/results/adversarial.json      # the full suite
    .venv/bin/python benchmarks/adversarial.py --quick                                         # what CI runs

Parts (each counted; the target is 0 everywhere):

* crafted banks: a valid bank altered the ways a shared bank can be hostile or broken (paths out of it, links out
  of it, a file owned by two records, a FIFO, numbers of 5,000 digits, nesting 100,000 deep, a shape of 10^12,
  a bank.json that is a link, a crafted journal, ...); on each, every command that reads or writes a bank runs
  in this process (``bank check/info/list/remove``, ``retrieve``, ``segment``). Counted: files outside the bank
  touched (a sentinel folder beside it is hashed before and after), tracebacks (an exception escaping the CLI,
  or "Traceback" on stderr), hangs (no answer within 60 s), and hostile banks accepted (a command exiting 0);
* bad inputs: command lines with wrong values, files or shapes (``INPUTS``); each must exit non-zero with a
  message and no traceback. Counted: accepted, tracebacks;
* concurrent writers: ``--writers`` processes add references to one bank at the same time for ``--rounds`` each;
  afterwards every reported reference must be there and ``check`` clean. Counted: lost, corrupt;
* kills: ``crash_trials.run_trials`` (writers SIGKILLed at random moments). Counted: lost, corrupt, left behind.

Prints the machine and the counts; ``tests/test_adversarial.py`` runs ``--quick`` in CI and asserts the zeros.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from crash_trials import run_trials  # noqa: E402

from napari_matchseg.bank import ReferenceBank  # noqa: E402
from napari_matchseg.cli import main as cli  # noqa: E402

HANG_S = 60


class Hung(Exception):
    pass


def run_cli(args: list[str]) -> tuple[int | None, str, str]:
    """(exit code or None for an escaped exception / a hang, stderr, what escaped) of one in-process command."""
    err, out = io.StringIO(), io.StringIO()

    def alarm(*_):
        raise Hung(f"no answer within {HANG_S} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = cli([str(a) for a in args])
        return code, err.getvalue(), ""
    except Hung as exc:
        return None, err.getvalue(), f"hang: {exc}"
    except SystemExit as exc:  # argparse's own refusals exit 2 with a usage line
        return int(exc.code or 0), err.getvalue(), ""
    except BaseException as exc:  # noqa: BLE001 - counted: a traceback the user would have seen
        return None, err.getvalue(), f"{type(exc).__name__}: {exc}"[:300]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def judge(args: list, what: str, counts: dict, problems: list, refused: str | None) -> tuple[int | None, str]:
    """Run one command and count what went wrong: a hang, a traceback, or (``refused`` names the count) an exit 0
    where a refusal was due. Returns (exit code, stderr)."""
    code, err, escaped = run_cli(args)
    if escaped.startswith("hang"):
        counts["hangs"] += 1
        problems.append(f"{what}: {escaped}")
    elif escaped or "Traceback" in err:
        counts["tracebacks"] += 1
        problems.append(f"{what}: {escaped or err.strip().splitlines()[-1]}")
    elif refused is not None and code == 0:
        counts[refused] += 1
        problems.append(f"{what}: accepted (exit 0)")
    return code, err


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


# ------------------------------------------------------------------------------------------------ crafted banks
def _image(seed: int, shape=(48, 56)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _mask(shape=(48, 56)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[10:30, 12:40] = 1
    return m


def make_bank(path: Path) -> ReferenceBank:
    bank = ReferenceBank.create(path)
    bank.add_many((_image(i), _mask(), f"ref{i}") for i in range(3))
    bank.update_mask(bank.ids()[0], np.roll(_mask(), 3, axis=0))  # a revision file: masks/<id>.r2.png
    return bank


def _meta(bank: Path) -> dict:
    return json.loads((bank / "bank.json").read_text())


def _write_meta(bank: Path, meta) -> None:
    (bank / "bank.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))


def _edit(key: str, value, index: int = 0):
    def craft(bank: Path, outside: Path) -> None:
        meta = _meta(bank)
        meta["references"][index][key] = value(bank, outside) if callable(value) else value
        _write_meta(bank, meta)
    return craft


def _link_file(relative: str, target: str):
    def craft(bank: Path, outside: Path) -> None:
        p = bank / relative
        p.unlink()
        p.symlink_to(outside / target)
    return craft


def _link_folder(name: str):
    def craft(bank: Path, outside: Path) -> None:
        shutil.rmtree(bank / name)
        (bank / name).symlink_to(outside, target_is_directory=True)
    return craft


def _fifo(bank: Path, outside: Path) -> None:
    rec = _meta(bank)["references"][1]
    (bank / rec["image_file"]).unlink()
    os.mkfifo(bank / rec["image_file"])


def _shared_revision(bank: Path, outside: Path) -> None:
    meta = _meta(bank)
    first = meta["references"][0]
    twin = dict(meta["references"][1], id=first["id"] + ".r2", mask_file=first["mask_file"])
    meta["references"].append(twin)
    _write_meta(bank, meta)


def _hard_link(bank: Path, outside: Path) -> None:
    rec = _meta(bank)["references"][2]
    p = bank / rec["image_file"]
    p.unlink()
    os.link(outside / "linked.png", p)  # readable (same content, same hash); never written through


def _nested(bank: Path, outside: Path) -> None:
    text = (bank / "bank.json").read_text()
    _write_meta(bank, text.replace('"references"', '"deep": ' + "[" * 100_000 + "]" * 100_000 + ', "references"', 1))


def _huge_number(bank: Path, outside: Path) -> None:
    text = (bank / "bank.json").read_text()
    _write_meta(bank, text.replace('"version": ', '"version": ' + "9" * 5000 + ", \"v0\": ", 1))


def _journal(bank: Path, outside: Path) -> None:
    (bank / ".pending.json").write_text(json.dumps({"remove": [str(outside / "secret.txt"), "../outside/secret.txt"],
                                                    "files": [str(outside / "secret.txt")]}))


def _link_lock(bank: Path, outside: Path) -> None:
    (bank / ".bank.lock").unlink(missing_ok=True)
    (bank / ".bank.lock").symlink_to(outside / "secret.txt")


def _bank_json_link(bank: Path, outside: Path) -> None:
    shutil.copy(bank / "bank.json", outside / "bank.json")
    (bank / "bank.json").unlink()
    (bank / "bank.json").symlink_to(outside / "bank.json")


# name -> (craft, hostile: every command must refuse it)
CRAFTED = {
    "image_file ../ escape": (_edit("image_file", "../outside/secret.png"), True),
    "mask_file absolute path": (_edit("mask_file", lambda b, o: str(o / "secret.png")), True),
    "id with a folder": (_edit("id", "../../x"), True),
    "a file owned by two records": (_shared_revision, True),
    "shape 10^12 x 10^12": (_edit("shape", [10**12, 10**12]), True),
    "shape of 7 channels": (_edit("shape", [48, 56, 7]), True),
    "foreground_fraction NaN": (_edit("foreground_fraction", "NaN"), True),
    "source not known": (_edit("source", "/etc/passwd"), True),
    "references not a list": (lambda b, o: _write_meta(b, dict(_meta(b), references={"a": 1})), True),
    "version not a number": (lambda b, o: _write_meta(b, dict(_meta(b), version="1; rm -rf /")), True),
    "5,000-digit number": (_huge_number, True),
    "nesting 100,000 deep": (_nested, True),
    "bank.json truncated": (lambda b, o: _write_meta(b, (b / "bank.json").read_text()[:40]), True),
    "bank.json a link out": (_bank_json_link, True),
    "images/ a link out": (_link_folder("images"), True),
    "masks/ a link out": (_link_folder("masks"), True),
    "an image a link out": (lambda b, o: _link_file(_meta(b)["references"][1]["image_file"], "secret.png")(b, o),
                            False),
    "a FIFO for an image": (_fifo, False),
    "a hard link to an outside file": (_hard_link, False),
    "a crafted journal": (_journal, False),
    "lock file a link out": (_link_lock, True),
}


def crafted_banks(work: Path, names: list[str], with_segment: bool, log=print) -> dict:
    counts = {"variants": 0, "operations": 0, "outside_touched": 0, "tracebacks": 0, "hangs": 0,
              "hostile_accepted": 0}
    problems = []
    query = work / "query"
    query.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_image(99)).save(query / "q.png")
    for n, name in enumerate(names):
        craft, hostile = CRAFTED[name]
        root = work / f"crafted-{n:02d}"
        bank, outside = root / "bank", root / "outside"
        outside.mkdir(parents=True)
        Image.fromarray(_image(7)).save(outside / "secret.png")
        (outside / "secret.txt").write_text("not yours to touch")
        ref = make_bank(bank)
        Image.fromarray(ref.load_image(ref.ids()[2])).save(outside / "linked.png")
        craft(bank, outside)
        before = snapshot(outside)
        some_id = ref.ids()[1]
        ops = [["bank", "check", bank], ["bank", "info", bank], ["bank", "list", bank],
               ["retrieve", bank, query / "q.png"], ["bank", "remove", bank, some_id]]
        if with_segment:
            ops.insert(4, ["segment", "--bank", bank, "--images", query, "--out", root / "masks"])
        for op in ops:
            counts["operations"] += 1
            judge(op, f"{name}: {' '.join(str(a) for a in op[:2])}", counts, problems,
                  "hostile_accepted" if hostile else None)
        after = snapshot(outside)
        touched = [k for k in set(before) | set(after) if before.get(k) != after.get(k)]
        counts["outside_touched"] += len(touched)
        problems += [f"{name}: outside file touched: {t}" for t in touched]
        counts["variants"] += 1
        log(f"  crafted: {name:36s} {'refused' if hostile else 'handled'}; outside touched {len(touched)}")
    return {**counts, "problems": problems[:20]}


# --------------------------------------------------------------------------------------------------- bad inputs
def bad_inputs(work: Path, log=print) -> dict:
    """Command lines that must be refused (exit != 0) with a message and no traceback."""
    import nibabel as nib
    import tifffile

    work.mkdir(parents=True, exist_ok=True)
    bank = make_bank(work / "bank").path
    images = work / "images"
    images.mkdir()
    Image.fromarray(_image(1)).save(images / "a.png")
    masks = work / "masks"
    masks.mkdir()
    Image.fromarray(_mask() * 255).save(masks / "a.png")
    stack = work / "stack"
    stack.mkdir()
    Image.fromarray(_image(2)).save(stack / "s.png")
    tifffile.imwrite(work / "stack-masks.tif", np.stack([_mask() * 255] * 5), photometric="minisblack")
    (work / "stack-masks").mkdir()
    shutil.copy(work / "stack-masks.tif", work / "stack-masks" / "s.tif")
    nib.save(nib.Nifti1Image(_image(3).astype(np.float32), np.eye(4)), str(work / "flat.nii.gz"))
    (work / "empty-masks").mkdir()
    Image.fromarray(np.zeros((48, 56), np.uint8)).save(work / "empty-masks" / "a.png")
    (work / "small-masks").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8) + 255 * (np.arange(400).reshape(20, 20) % 2).astype(np.uint8)) \
        .save(work / "small-masks" / "a.png")
    (work / "not-images").mkdir()
    (work / "not-images" / "a.png").write_bytes(b"this is not a png")
    (work / "bad.ckpt").write_bytes(b"\0" * 64)
    prompts = {"bools": {"a.png": {"boxes": [[True, False, True, True]]}},
               "huge": {"a.png": {"boxes": [[0, 0, 1e308, 1e308]]}},
               "label2": {"a.png": {"points": [[5, 5, 2]]}},
               "nested": "[" * 100_000 + "]" * 100_000}
    for name, value in prompts.items():
        (work / f"prompts-{name}.json").write_text(value if isinstance(value, str) else json.dumps(value))
    seg = ["segment", "--bank", bank, "--images", images]
    cases = {
        "--out is the input folder": [*seg, "--out", images, "--overwrite"],
        "--out inside the bank": [*seg, "--out", bank / "images", "--overwrite", "--allow-self"],
        "--out the bank's masks": [*seg, "--out", bank / "masks"],
        "--refine-threshold 2": [*seg, "--out", work / "o1", "--refine", "litemedsam", "--refine-threshold", "2"],
        "--refine-margin -5": [*seg, "--out", work / "o2", "--refine", "litemedsam", "--refine-margin", "-5"],
        "-k 0 for matchseg": [*seg, "--out", work / "o3", "-k", "0"],
        "-k -3": [*seg, "--out", work / "o4", "-k", "-3"],
        "unknown proposer": [*seg, "--out", work / "o5", "--proposer", "magic"],
        "a corrupt checkpoint": [*seg, "--out", work / "o6", "--checkpoint", work / "bad.ckpt"],
        "a folder as checkpoint": [*seg, "--out", work / "o7", "--checkpoint", work],
        "prompt boxes of booleans": [*seg, "--out", work / "o8", "--proposer", "litemedsam", "--prompts",
                                     work / "prompts-bools.json"],
        "prompt boxes of 1e308": [*seg, "--out", work / "o9", "--proposer", "litemedsam", "--prompts",
                                  work / "prompts-huge.json"],
        "a point label of 2": [*seg, "--out", work / "o10", "--proposer", "litemedsam", "--prompts",
                               work / "prompts-label2.json"],
        "prompts nested 100,000 deep": [*seg, "--out", work / "o11", "--proposer", "litemedsam", "--prompts",
                                        work / "prompts-nested.json"],
        "propagate --min-quality -1": ["propagate", work / "flat.nii.gz", "--labels", work / "flat.nii.gz",
                                       "--out", work / "o13.nii.gz", "--min-quality", "-1"],
        "a multi-page TIFF as a 2D mask": ["bank", "add", work / "bank2", "--images", stack, "--masks",
                                           work / "stack-masks"],
        "an empty mask to bank add": ["bank", "add", work / "bank3", "--images", images, "--masks",
                                      work / "empty-masks"],
        "a mask of another size": ["bank", "add", work / "bank4", "--images", images, "--masks", work / "small-masks"],
        "a file that is not an image": ["bank", "add", work / "bank5", "--images", work / "not-images", "--masks",
                                        masks],
        "a missing bank": ["retrieve", work / "no-such-bank", images / "a.png"],
        "a query that is not an image": ["retrieve", bank, work / "bad.ckpt"],
        "eval into an existing --json": ["eval", "--bank", bank, "--images", images, "--masks", masks, "--json",
                                         masks / "a.png"],
    }
    counts = {"inputs": 0, "accepted": 0, "tracebacks": 0, "hangs": 0}
    problems = []
    for name, args in cases.items():
        counts["inputs"] += 1
        code, err = judge(args, name, counts, problems, "accepted")
        line = (err.strip().splitlines() or [""])[-1]
        log(f"  bad input: {name:32s} exit {code}: {line[:110]}")
    return {**counts, "problems": problems}


# ------------------------------------------------------------------------------------------- concurrent writers
WRITER = textwrap.dedent("""
    import sys, numpy as np
    from napari_matchseg.bank import ReferenceBank
    bank = ReferenceBank.open(sys.argv[1], create=True)
    tag, rounds = sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(abs(hash(tag)) % 2**32)
    for i in range(rounds):
        m = np.zeros((40, 40), np.uint8); m[5:30, 5:30] = 1
        ref = bank.add(rng.integers(0, 256, (40, 40), dtype=np.uint8), m, name=f"{tag}-{i}")
        print("add", ref.id, flush=True)
        if i % 3 == 2:
            bank.update_mask(ref.id, np.roll(m, 2, axis=1))
""")


def concurrent_writers(work: Path, writers: int, rounds: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    bank = work / "bank"
    ReferenceBank.create(bank)
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(bank), f"w{i}", str(rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(writers)]
    reported, failed = [], []
    for p in procs:
        out, err = p.communicate(timeout=600)
        reported += [line.split()[1] for line in out.splitlines() if line.startswith("add ")]
        if p.returncode != 0:
            failed.append(err.strip().splitlines()[-1] if err.strip() else f"exit {p.returncode}")
    opened = ReferenceBank.open(bank)
    lost = sorted(set(reported) - set(opened.ids()))
    corrupt = [str(p) for p in opened.check()]
    return {"writers": writers, "rounds": rounds, "committed": len(reported), "lost": len(lost),
            "corrupt": len(corrupt), "writer_failures": failed[:5], "lost_ids": lost[:10],
            "seconds": round(time.time() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the short form CI runs: fewer kills, rounds, no segment")
    ap.add_argument("--kills", type=int, default=None, help="kill trials (default 100; --quick 8)")
    ap.add_argument("--writers", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=None, help="adds per writer (default 10; --quick 4)")
    ap.add_argument("--work", help="folder for the banks (default: a new temporary folder)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    kills = args.kills if args.kills is not None else (8 if args.quick else 100)
    rounds = args.rounds if args.rounds is not None else (4 if args.quick else 10)
    work = Path(args.work or tempfile.mkdtemp(prefix="adversarial-"))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python " \
              f"{platform.python_version()}"
    print(f"machine: {machine}; work in {work}")
    t0 = time.time()
    result = {"machine": machine, "quick": args.quick}
    result["crafted_banks"] = crafted_banks(work / "crafted", list(CRAFTED), with_segment=not args.quick)
    result["bad_inputs"] = bad_inputs(work / "inputs")
    result["concurrent_writers"] = concurrent_writers(work / "concurrent", args.writers, rounds)
    trials = run_trials(kills, work / "kills", seed=0, max_delay_s=1.0, log=lambda msg: None) if kills else {}
    result["kills"] = {k: trials.get(k) for k in ("trials", "kills", "lost", "corrupt", "orphans_left",
                                                  "committed_reported")} if trials else {}
    c, b, w, k = (result[p] for p in ("crafted_banks", "bad_inputs", "concurrent_writers", "kills"))
    result["totals"] = {
        "outside_touched": c["outside_touched"],
        "lost": w["lost"] + (k.get("lost") or 0),
        "corrupt": w["corrupt"] + (k.get("corrupt") or 0) + (k.get("orphans_left") or 0),
        "tracebacks": c["tracebacks"] + b["tracebacks"],
        "hangs": c["hangs"] + b["hangs"],
        "accepted_bad_inputs": b["accepted"] + c["hostile_accepted"],
    }
    result["seconds"] = round(time.time() - t0, 1)
    print(f"crafted banks: {c['variants']} variants, {c['operations']} operations; bad inputs: {b['inputs']}; "
          f"concurrent: {w['writers']} writers x {w['rounds']} adds ({w['committed']} committed); kills: "
          f"{k.get('kills', 0)} of {k.get('trials', 0)} trials")
    print("totals: " + ", ".join(f"{v} {n.replace('_', ' ')}" for n, v in result["totals"].items())
          + f" ({result['seconds']:.0f} s)")
    for part in ("crafted_banks", "bad_inputs"):
        for p in result[part]["problems"]:
            print(f"  problem: {p}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if not any(result["totals"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
