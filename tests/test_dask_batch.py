"""``matchseg segment/eval --dask``: a real scheduler and real workers (subprocesses on 127.0.0.1), a local
cluster, a worker killed mid-batch, an unreachable scheduler. The masks must be exactly the plain run's."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_matchseg.cli import main

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed (pip install '.[dask]')")

N_QUERIES = 24
BIN = Path(sys.executable).parent


def segment(root: Path, out: Path, *extra) -> tuple:
    return ("segment", "--bank", root / "bank", "--images", root / "images", "--out", out, *extra)


def evaluate(root: Path, *extra) -> tuple:
    return ("eval", "--bank", root / "bank", "--images", root / "images", "--masks", root / "masks", *extra)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A bank of generated samples, a folder of other samples to segment, and the plain run's masks."""
    from napari_matchseg.bank import ReferenceBank
    from napari_matchseg.image_io import write_mask
    from napari_matchseg.sample_data import make_sample

    root = tmp_path_factory.mktemp("dask-batch")
    bank = ReferenceBank.create(root / "bank")
    bank.add_many((img, m, name) for name, img, m in make_sample("ultrasound", 4) + make_sample("cells", 4))
    from PIL import Image

    (root / "images").mkdir()
    (root / "masks").mkdir()
    queries = make_sample("ultrasound", N_QUERIES // 2, seed=1) + make_sample("cells", N_QUERIES // 2, seed=1)
    for name, img, m in queries:
        Image.fromarray(img).save(root / "images" / f"{name}.png")
        write_mask(root / "masks" / f"{name}.png", m)
    assert main([str(a) for a in segment(root, root / "plain")]) == 0
    return root


def masks_of(folder: Path) -> dict[str, np.ndarray]:
    from napari_matchseg.image_io import read_mask

    return {p.name: read_mask(p) for p in sorted(folder.iterdir())}


def assert_same_masks(folder: Path, plain: Path):
    got, want = masks_of(folder), masks_of(plain)
    assert sorted(got) == sorted(want) and len(want) == N_QUERIES  # nothing lost, nothing extra, no temp files
    different = [n for n in want if not np.array_equal(got[n], want[n])]
    assert not different, f"masks differ from the plain run: {different}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def scheduler(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes from the shell's command line, on 127.0.0.1."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    address = f"tcp://127.0.0.1:{free_port()}"
    logs = [open(tmp_path / f"{n}.log", "w") for n in ("scheduler", "worker-1", "worker-2")]
    procs = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                               "--no-dashboard"], stdout=logs[0], stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)]
    for log in logs[1:]:
        procs.append(subprocess.Popen([BIN / "dask", "worker", address, "--nthreads", "1", "--no-dashboard",
                                       "--memory-limit", "0", "--death-timeout", "60"],
                                      stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
    try:
        with distributed.Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in procs[::-1]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for log in logs:
            log.close()


def test_a_real_scheduler_and_two_workers_write_the_plain_runs_masks(batch, scheduler, tmp_path, capsys):
    code, out, err = run(capsys, *segment(batch, tmp_path / "out"),
                         "--dask", scheduler, "--chunk-size", "5")
    assert code == 0, err
    assert f"wrote {N_QUERIES} masks" in out and "on 2 Dask workers" in err and "5 chunks" in err
    assert_same_masks(tmp_path / "out", batch / "plain")
    # the same again: refused without --skip-existing / --overwrite, nothing rewritten with --skip-existing
    code, _, err = run(capsys, *segment(batch, tmp_path / "out"),
                       "--dask", scheduler)
    assert code == 2 and "--skip-existing" in err
    code, out, _ = run(capsys, *segment(batch, tmp_path / "out"),
                       "--dask", scheduler, "--skip-existing")
    assert code == 0 and f"{N_QUERIES} already there were kept" in out


def test_eval_on_dask_gathers_the_plain_runs_metrics(batch, scheduler, tmp_path, capsys):
    code, _, err = run(capsys, *evaluate(batch),
                       "--json", tmp_path / "plain.json")
    assert code == 0, err
    code, _, err = run(capsys, *evaluate(batch),
                       "--json", tmp_path / "dask.json", "--dask", scheduler, "--chunk-size", "3")
    assert code == 0, err
    plain, dask = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("plain", "dask"))
    assert dask["n"] == plain["n"] == N_QUERIES
    assert dask["rows"] == plain["rows"] and dask["dice_mean"] == plain["dice_mean"] > 0.5


def test_a_local_cluster_of_two_workers_writes_the_plain_runs_masks(batch, tmp_path, capsys):
    code, out, err = run(capsys, *segment(batch, tmp_path / "out"),
                         "--dask", "local:2")
    assert code == 0, err
    assert "on 2 Dask workers" in err
    assert_same_masks(tmp_path / "out", batch / "plain")


def run_killing_a_worker(cmd: list, out: Path, victim, timeout_s: float = 400) -> tuple[int, str, str, bool]:
    """Run the batch ``cmd``; once some but not most masks are in ``out``, SIGKILL the process ``victim(pid of the
    batch)`` names (None: none yet). (exit code, stdout, stderr, whether a kill happened)."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = threading.Event()

    def kill_when_under_way():
        deadline = time.monotonic() + timeout_s / 2
        while time.monotonic() < deadline and proc.poll() is None:
            written = len([p for p in out.glob("*.png") if ".tmp-" not in p.name]) if out.exists() else 0
            target = victim(proc.pid) if 2 <= written < N_QUERIES - 6 else None
            if target is not None:
                os.kill(target, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_when_under_way)
    watcher.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    finally:
        watcher.join()
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout, stderr, killed.is_set()


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(batch, scheduler, tmp_path):
    """The batch runs as a separate ``matchseg`` process; one worker is SIGKILLed once some masks are written.
    Dask reruns that worker's chunks elsewhere; they find the masks already written and keep them."""
    out = tmp_path / "out"
    with distributed.Client(scheduler, timeout="30s") as client:
        pids = client.run(os.getpid)
    victim = next(iter(pids.values()))
    returncode, stdout, stderr, killed = run_killing_a_worker(
        [BIN / "matchseg", *segment(batch, out, "--dask", scheduler, "--chunk-size", "1")], out, lambda pid: victim)
    assert killed, "the batch finished before a worker could be killed; make it longer"
    assert returncode == 0, stderr
    assert f"wrote {N_QUERIES} masks" in stdout
    assert "Traceback" not in stderr, stderr  # Dask's lost-connection logs stay one line each
    leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name]
    for name in leftovers:  # a write cut by the kill leaves at most a temp file, which readers ignore
        (out / name).unlink()
    assert len(leftovers) <= 1
    assert_same_masks(out, batch / "plain")


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, children before grandchildren (Linux /proc)."""
    children = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").glob("*"))
    except OSError:  # the process ended meanwhile
        return []
    for task in tasks:
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return children + [d for c in children for d in _descendants(c)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:  # the process ended meanwhile
        return ""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through Linux /proc")
def test_a_local_workers_death_is_one_line_on_stderr_and_the_batch_completes(batch, tmp_path):
    out = tmp_path / "out"

    def a_worker(pid: int) -> int | None:  # a LocalCluster worker: a spawned child of the batch process
        workers = [d for d in _descendants(pid) if "spawn_main" in _cmdline(d)]
        return workers[-1] if workers else None

    returncode, stdout, stderr, killed = run_killing_a_worker(
        [BIN / "matchseg", *segment(batch, out, "--dask", "local:2", "--chunk-size", "1")], out, a_worker)
    assert killed, "the batch finished before a worker could be killed; make it longer"
    assert returncode == 0 and f"wrote {N_QUERIES} masks" in stdout, stderr
    assert "Traceback" not in stderr, stderr


def test_the_docs_local_scheduler_snippet_runs_as_written(batch, tmp_path):
    """docs/batch.md's shell block, word for word but on a free port: a scheduler, two workers, one batch."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "batch.md").read_text()
    block = doc.split("<!-- snippet: local-scheduler -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert "dask scheduler" in block and "--dask tcp://127.0.0.1:8786" in block
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "BANK": str(batch / "bank"),
           "ARCHIVE": str(batch / "images"), "MASKS": str(tmp_path / "masks")}
    proc = subprocess.run(["bash", "-c", block.replace("8786", str(free_port()))], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote {N_QUERIES} masks" in proc.stdout
    assert_same_masks(tmp_path / "masks", batch / "plain")


def test_an_unreachable_scheduler_is_a_clear_error_within_seconds(batch, tmp_path, capsys):
    start = time.monotonic()
    code, _, err = run(capsys, *segment(batch, tmp_path / "out"),
                       "--dask", f"tcp://127.0.0.1:{free_port()}")
    assert code == 2 and "cannot reach the Dask scheduler" in err and "dask scheduler" in err
    assert time.monotonic() - start < 30
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("spec, message", [("local:0", "local:N"), ("local:two", "local:N"), ("nonsense", "address")])
def test_a_bad_scheduler_spec_is_refused_before_anything_runs(batch, tmp_path, capsys, spec, message):
    code, _, err = run(capsys, *segment(batch, tmp_path / "out"),
                       "--dask", spec)
    assert code == 2 and message in err and err.count("\n") == 1


def test_chunks_cover_every_item_once():
    from napari_matchseg.batch import chunks, default_chunk_size
    from napari_matchseg.errors import InputError

    items = list(range(203))
    parts = list(chunks(items, default_chunk_size(len(items), 2)))
    assert [i for p in parts for i in p] == items and 12 <= len(parts) <= 20
    assert default_chunk_size(10**6, 4) == 64 and default_chunk_size(3, 8) == 1
    with pytest.raises(InputError, match="at least 1"):
        list(chunks(items, 0))


def test_dask_log_lines_with_a_traceback_become_one_line(capsys):
    """What Dask logs with exc_info (a lost worker's CommClosedError) prints as one line while a batch runs."""
    import logging

    from napari_matchseg.dask_batch import one_line_logs

    logger = logging.getLogger("distributed.core")
    handler = logging.StreamHandler()
    logging.getLogger("distributed").addHandler(handler)
    try:
        with one_line_logs("distributed"):
            try:
                raise ConnectionError("Stream is closed\nwhile reading from tcp://127.0.0.1:1")
            except ConnectionError:
                logger.exception("Exception while handling op %s", "gather")
        err = capsys.readouterr().err
        assert err.strip() == "Exception while handling op gather (ConnectionError: Stream is closed)", err
        try:
            raise ConnectionError("later")
        except ConnectionError:
            logger.exception("outside a batch")  # the filter is gone afterwards: logging is as before
        assert "Traceback" in capsys.readouterr().err
    finally:
        logging.getLogger("distributed").removeHandler(handler)
