"""Support features of a proposer, cached on disk in the bank: ``BANK/features/<model_id>/<image sha256>.npy``.

One small float16 file per reference image and model (the coarse encoder features, flattened and
concatenated), written atomically; a missing or unreadable file just means "compute it again".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .embedding_store import store_folder_name
from .fsutil import atomic_save_npy


class FeatureCache:
    def __init__(self, bank_path: str | Path, model_id: str):
        self.bank_path = Path(bank_path)
        self.folder = self.bank_path / "features" / store_folder_name(model_id)
        self._shapes: list[tuple[int, ...]] | None = None

    def _file(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def _usable(self) -> bool:
        """A symbolic link in the cache's path could lead out of the bank: then the cache is not used."""
        return not (self.folder.is_symlink() or self.folder.parent.is_symlink())

    def get(self, key: str) -> list[torch.Tensor] | None:
        f = self._file(key)
        if self._shapes is None or not self._usable() or f.is_symlink() or not f.is_file():
            return None
        try:
            flat = np.load(f)
        except (OSError, ValueError):
            return None
        sizes = [int(np.prod(s)) for s in self._shapes]
        if flat.size != sum(sizes):
            return None
        out, start = [], 0
        for shape, n in zip(self._shapes, sizes):
            out.append(torch.from_numpy(flat[start:start + n].astype(np.float32).reshape(shape)))
            start += n
        return out

    def put(self, key: str, feats: list[torch.Tensor]) -> None:
        self._shapes = [tuple(f.shape) for f in feats]
        flat = np.concatenate([f.numpy().astype(np.float16).ravel() for f in feats])
        if not self._usable():
            return
        try:
            atomic_save_npy(self._file(key), flat)
        except OSError:
            pass  # a read-only bank still works, only slower

    def bind(self, shapes: list[tuple[int, ...]]) -> None:
        """Tell the cache the feature shapes of its model (so it can read files written earlier)."""
        self._shapes = [tuple(s) for s in shapes]


class TieredCache:
    """Per-reference features of a proposer: an LRU in memory in front of an optional :class:`FeatureCache`."""

    def __init__(self, size: int):
        self.size = size
        self.store: FeatureCache | None = None
        self._mem: OrderedDict[str, list[torch.Tensor]] = OrderedDict()

    def get_or_compute(self, key: str, compute: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
        value = self._mem.get(key)
        if value is None and self.store is not None:
            value = self.store.get(key)
        if value is None:
            value = compute()
            if self.store is not None:
                self.store.put(key, value)
        self._mem[key] = value
        self._mem.move_to_end(key)
        while len(self._mem) > self.size:
            self._mem.popitem(last=False)
        return value

    def clear_memory(self) -> None:
        self._mem.clear()
