"""A whole folder segmented or scored item by item, the same way in one process and on Dask workers.

``matchseg segment`` and ``matchseg eval`` call :func:`segment_one` / :func:`evaluate_one` for each image; with
``--dask`` they send chunks of images to :func:`segment_chunk` / :func:`evaluate_chunk` on the workers
(:mod:`napari_matchseg.dask_batch`). A worker process builds the pipeline of a :class:`BatchJob` once and reuses
it for every chunk it gets (:func:`worker_pipeline`); the bank is opened by path, so it must be on storage every
worker reads, and its embeddings and per-reference features are computed once, before the batch
(:meth:`Pipeline.prepare`), so that workers only read them. Masks are written atomically (temporary file, then
rename) with the rules of a plain run: an existing mask is kept unless ``overwrite``, so a chunk retried after its
worker died finds the masks it already wrote and keeps them.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import InputError
from .pipeline import Pipeline, PipelineConfig, evaluate_pair, image_rng


@dataclasses.dataclass(frozen=True)
class BatchJob:
    """Everything a worker needs to build the pipeline and write like the plain run (it is sent to every worker)."""

    config: PipelineConfig
    bank: str | None  # the bank's folder, on storage every worker can read
    threshold: float = 0.5
    overwrite: bool = False
    threads: int | None = None  # torch threads in each worker process (None: the Dask worker's thread count)

    def key(self) -> str:
        return json.dumps([dataclasses.asdict(self.config), self.bank], sort_keys=True, default=str)


@dataclasses.dataclass
class ItemResult:
    name: str
    status: str  # "written", "kept" (the mask was there already: a retried chunk), "scored", "failed"
    message: str = ""
    row: dict[str, Any] | None = None  # evaluate: the image's metrics

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def segment_one(bank, pipeline: Pipeline, job: BatchJob, image: str | Path, target: str | Path,
                prompts: dict | None = None) -> ItemResult:
    """Propose and write one mask. An image that cannot be used is a failed item (the batch goes on); a disk that
    cannot be written raises (the batch stops: every other mask would fail the same way)."""
    from .image_io import write_mask

    image, target = Path(image), Path(target)
    if target.exists() and not job.overwrite:
        return ItemResult(image.name, "kept", f"{target.name} was already written")
    try:
        _, proposal = pipeline.propose_file(bank, image, image_rng(image.name), prompts)
    except InputError as exc:
        return ItemResult(image.name, "failed", str(exc))
    write_mask(target, proposal.mask(job.threshold), overwrite=job.overwrite)
    return ItemResult(image.name, "written")


def evaluate_one(bank, pipeline: Pipeline, image: str | Path, mask: str | Path,
                 prompts: dict | None = None, max_clicks: int = 0) -> ItemResult:
    try:
        row = evaluate_pair(pipeline, bank, image, mask, prompts, max_clicks)
    except InputError as exc:
        return ItemResult(Path(image).name, "failed", str(exc))
    return ItemResult(Path(image).name, "scored", row=row)


# ---------------------------------------------------------------------------- on a worker
_BUILT: dict[str, tuple[Any, Pipeline, threading.Lock]] = {}
_BUILDING = threading.Lock()


def worker_pipeline(job: BatchJob):
    """(bank, pipeline, lock) of ``job`` in this process, built on its first chunk and kept for the next ones.
    The lock runs one chunk at a time on the pipeline (its models and caches are not shared between threads);
    torch then uses ``job.threads`` threads, or as many as the Dask worker has."""
    key = job.key()
    with _BUILDING:
        if key not in _BUILT:
            import torch

            from .bank import ReferenceBank

            _let_torch_reuse_memory()
            threads = job.threads or _dask_worker_threads()
            if threads:
                torch.set_num_threads(threads)
            bank = ReferenceBank.open(job.bank) if job.bank else None
            _BUILT[key] = (bank, Pipeline(job.config).load(), threading.Lock())
    return _BUILT[key]


def _let_torch_reuse_memory() -> None:
    """Undo, for this process, the glibc setting Dask's nanny gives its workers (``MALLOC_TRIM_THRESHOLD_``).

    Setting it also turns off glibc's adaptive mmap threshold, so every tensor buffer over 128 KiB is mapped and
    unmapped on each use, page faults included: measured, convolutions ran 1.7 times slower in a Dask worker than
    in a plain process. Large thresholds let freed buffers be reused from the heap again (docs/batch.md)."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): nothing to undo
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's own upper bound for the adaptive threshold
    libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def _dask_worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def segment_chunk(job: BatchJob, items: Sequence[tuple[str, str, dict | None]]) -> list[ItemResult]:
    """``items``: (image path, mask path to write, prompts or None) -- a Dask task."""
    bank, pipeline, lock = worker_pipeline(job)
    with lock:
        return [segment_one(bank, pipeline, job, image, target, prompts) for image, target, prompts in items]


def evaluate_chunk(job: BatchJob, items: Sequence[tuple[str, str, dict | None]]) -> list[ItemResult]:
    """``items``: (image path, true mask path, prompts or None) -- a Dask task."""
    bank, pipeline, lock = worker_pipeline(job)
    with lock:
        return [evaluate_one(bank, pipeline, image, mask, prompts) for image, mask, prompts in items]


def chunks(items: Sequence, size: int) -> Iterator[list]:
    if size < 1:
        raise InputError(f"--chunk-size must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def default_chunk_size(n_items: int, n_workers: int) -> int:
    """About eight chunks per worker (a slow or lost chunk costs little; per-chunk overhead stays small),
    at most 64 images each."""
    return max(1, min(64, -(-n_items // max(1, 8 * n_workers))))


__all__ = ["BatchJob", "ItemResult", "segment_one", "evaluate_one", "segment_chunk", "evaluate_chunk", "chunks",
           "default_chunk_size", "worker_pipeline"]
