"""Running a batch on Dask (``--dask SCHEDULER``): a local cluster of worker processes, or a running scheduler.

``local`` / ``local:N`` starts a :class:`distributed.LocalCluster` of N single-chunk worker processes (default: one
per core, torch threads shared out between them); ``tcp://host:8786`` (or any address Dask takes) connects to a
scheduler that is already running, e.g. one started by dask-jobqueue on a SLURM cluster (docs/batch.md). Chunks
are Dask tasks with retries: a chunk whose worker dies is run again elsewhere, and finds the masks it had
already written (:mod:`napari_matchseg.batch`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence

from .batch import BatchJob, ItemResult
from .errors import InputError

CONNECT_TIMEOUT_S = 10
RETRIES = 3  # a chunk is run again this often when its worker dies (or it raises)


def parse_scheduler(spec: str) -> tuple[str, int | str]:
    """("local", number of workers) or ("address", the scheduler's address)."""
    spec = spec.strip()
    if spec == "local" or spec.startswith("local:"):
        n = spec.partition(":")[2] or str(os.cpu_count() or 1)
        if not n.isdigit() or int(n) < 1:
            raise InputError(f"--dask {spec}: give local, or local:N with N worker processes (1 or more)")
        return "local", int(n)
    if "://" not in spec and ":" not in spec:
        raise InputError(f"--dask {spec!r}: give local[:N] or a scheduler address such as tcp://host:8786")
    return "address", spec


def check_dask_installed() -> None:
    _dask()


def _dask():
    try:
        import distributed
    except ImportError as exc:
        raise InputError("--dask needs Dask's distributed scheduler: pip install 'napari-matchseg[dask]' "
                         f"(or: pip install 'dask[distributed]') ({exc})") from exc
    return distributed


class OneLineLogs(logging.Filter):
    """Dask logs a lost worker's connection (CommClosedError, StreamClosedError) with its traceback, although the
    run retries the chunk and succeeds: keep the message and the exception's name, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            reason = type(exc).__name__ + (f": {detail}" if detail else "")
            record.msg, record.args = f"{record.getMessage()} ({reason})", None
            record.exc_info = record.exc_text = None
        record.stack_info = None
        return True


@contextlib.contextmanager
def one_line_logs(*names: str) -> Iterator[None]:
    """:class:`OneLineLogs` on the handlers of the given loggers (and the root's) while the block runs."""
    one_line = OneLineLogs()
    handlers = {h for n in (*names, "") for h in logging.getLogger(n).handlers}
    for h in handlers:
        h.addFilter(one_line)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(one_line)


@contextlib.contextmanager
def dask_client(spec: str, timeout_s: float = CONNECT_TIMEOUT_S) -> Iterator[tuple[object, int | None]]:
    """(client, torch threads per worker or None) for ``spec``; a local cluster is shut down afterwards. Dask's
    own log lines stay one line each (no traceback) while it runs."""
    _dask()  # (imported first: its log handlers exist from then on)
    with one_line_logs("distributed"):
        with _dask_client(spec, timeout_s) as out:
            yield out


@contextlib.contextmanager
def _dask_client(spec: str, timeout_s: float) -> Iterator[tuple[object, int | None]]:
    kind, value = parse_scheduler(spec)
    distributed = _dask()
    if kind == "local":
        threads = max(1, (os.cpu_count() or 1) // value)
        cluster = distributed.LocalCluster(n_workers=value, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
        try:
            with distributed.Client(cluster) as client:
                yield client, threads
        finally:
            cluster.close()
        return
    try:
        client = distributed.Client(value, timeout=f"{timeout_s}s")
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {value} within {timeout_s:g} s ({exc}); is "
                         "`dask scheduler` running there, and is the address right?") from exc
    try:
        if not client.scheduler_info().get("workers"):
            try:
                client.wait_for_workers(1, timeout=timeout_s * 3)
            except TimeoutError as exc:
                raise InputError(f"the Dask scheduler at {value} has no workers after {timeout_s * 3:g} s; start "
                                 f"some (`dask worker {value}`)") from exc
        yield client, None
    finally:
        client.close()


def warm_up(client, job: BatchJob) -> None:
    """Every worker starts building ``job``'s pipeline now, without waiting (its first chunk then finds it)."""
    distributed = _dask()
    for address in client.scheduler_info().get("workers", {}):
        distributed.fire_and_forget(client.submit(_build, job, workers=[address], allow_other_workers=False,
                                                  pure=False))


def _build(job: BatchJob) -> None:
    from .batch import worker_pipeline

    worker_pipeline(job)


def n_workers(client) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


def run_chunks(client, fn: Callable[[BatchJob, list], list[ItemResult]], job: BatchJob, chunks: Sequence[list],
               progress: Callable[[int, int], None] | None = None) -> list[ItemResult]:
    """Every chunk's results, in the chunks' order. A chunk that fails for good (after :data:`RETRIES`) makes its
    items failed ones, with the reason; the others go on."""
    distributed = _dask()
    job_future = client.scatter(job, broadcast=True)
    futures = client.map(fn, [job_future] * len(chunks), chunks, retries=RETRIES, pure=False)
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[list[ItemResult] | None] = [None] * len(chunks)
    total, done = sum(len(c) for c in chunks), 0
    for future in distributed.as_completed(futures):
        i = index[future.key]
        try:
            results[i] = future.result()
        except Exception as exc:  # noqa: BLE001 - reported per item; the other chunks' results are kept
            results[i] = [ItemResult(_name(item), "failed", f"{type(exc).__name__}: {exc}") for item in chunks[i]]
        done += len(chunks[i])
        if progress is not None:
            progress(done, total)
    return [r for chunk in results for r in chunk or []]


def _name(item) -> str:
    return os.path.basename(str(item[0]))


__all__ = ["check_dask_installed", "dask_client", "parse_scheduler", "run_chunks", "n_workers", "warm_up",
           "CONNECT_TIMEOUT_S"]
