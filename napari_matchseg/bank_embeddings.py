"""Retrieval vectors of a bank's references: embed only what is new, survive other processes and read-only disks."""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence

import filelock
import numpy as np

from .bank_files import disk_error_message
from .errors import BankError, ReferenceNotFound


class _LazyImages(Sequence):
    """Images of a bank read from disk only when a batch needs them; a reference that another process
    removed meanwhile gives a placeholder, and its index is noted in ``gone`` so its vector is dropped."""

    def __init__(self, bank, ids: list[str]):
        self._bank, self._ids = bank, ids
        self.gone: set[int] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i):
        try:
            return self._bank.load_image(self._ids[i])
        except ReferenceNotFound:
            self.gone.add(i)
            return np.zeros((8, 8), np.uint8)


def bank_embeddings(bank, retriever, progress: Callable[[int, int], None] | None = None,
                    cancel: Callable[[], bool] | None = None, must_cache: bool = False) -> np.ndarray:
    """The body of :meth:`ReferenceBank.embeddings` (see there)."""
    bank.refresh()
    store = bank.embedding_store(retriever.model_id)
    uncached: dict[str, np.ndarray] = {}
    while True:
        refs = list(bank)
        missing = [r for r in refs if not store.has(r.image_sha256) and r.image_sha256 not in uncached]
        if not missing:
            break
        images = _LazyImages(bank, [r.id for r in missing])
        vecs = np.asarray(retriever.embed(images, progress=progress, cancel=cancel), dtype=np.float32)
        keep = [i for i in range(len(missing)) if i not in images.gone]
        hashes = [missing[i].image_sha256 for i in keep]
        try:
            store.add(hashes, vecs[keep])
        except (OSError, filelock.Timeout) as exc:
            if must_cache:
                reason = exc if isinstance(exc, OSError) else OSError(errno.EBUSY, "locked by another process")
                raise BankError(disk_error_message(bank.path, "cache the vectors", reason)) from exc
            uncached.update(zip(hashes, vecs[keep]))
        if not images.gone:
            break
    hashes = [r.image_sha256 for r in refs]
    if not uncached:
        return store.get(hashes)
    return np.stack([uncached[h] if h in uncached else store.get([h])[0] for h in hashes])
