"""Cached retrieval vectors of one retriever, memory-mapped so a 10k-reference bank opens at once.

Files in ``embeddings/<model>/``::

    info.json              {"model_id", "dim", "count", "generation"}: committed last
    vectors-<gen>.npy      (N, dim) float32, L2-normalised, row i belongs to hashes[i]
    hashes-<gen>.npy       (N,) image content hashes (sha256 hex, bytes)

A write creates the next generation's two arrays and then switches ``info.json`` to them, so a
crash at any point leaves the previous generation in use. Rows are keyed by image content hash
(not by reference id): an image is embedded once per retriever, whatever it is called.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from .errors import BankError
from .fsutil import atomic_save_npy, atomic_write_json


def _plain(path: Path) -> Path:
    """``path`` if it is a regular file and no symbolic link (a shared bank's cache may not lead outside it)."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise BankError(f"embedding cache file {path} is a symbolic link or not a regular file, which is not "
                        "followed; delete that folder and the vectors will be recomputed")
    return path


def store_folder_name(model_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._-")[:60] or "model"
    return f"{slug}-{hashlib.sha1(model_id.encode()).hexdigest()[:8]}"


class EmbeddingStore:
    def __init__(self, root: str | Path, model_id: str, lock=None):
        self.model_id = model_id
        self.folder = Path(root) / store_folder_name(model_id)
        self._lock = lock
        self._load()

    @classmethod
    def from_folder(cls, folder: Path) -> EmbeddingStore | None:
        try:
            info = json.loads(_plain(folder / "info.json").read_text())
        except (OSError, ValueError, BankError):
            return None
        return cls(folder.parent, info["model_id"])

    def _info_signature(self) -> tuple | None:
        try:
            st = (self.folder / "info.json").stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def refresh(self) -> None:
        """Reload if another process (or store object) committed a new generation since we loaded."""
        if self._info_signature() != self._signature:
            self._load()

    def _load(self) -> None:
        if self.folder.is_symlink():
            raise BankError(f"embedding cache {self.folder} is a symbolic link, which is not followed; delete the "
                            "link and the vectors will be recomputed")
        self._signature = self._info_signature()
        self._vectors: np.ndarray | None = None
        self._hashes: np.ndarray = np.empty(0, dtype="S64")
        self._index: dict[bytes, int] | None = None
        self.dim: int | None = None
        self.generation = 0
        info_file = self.folder / "info.json"
        if not info_file.exists():
            return
        try:
            info = json.loads(_plain(info_file).read_text())
            gen = int(info["generation"])
            vectors = np.load(_plain(self.folder / f"vectors-{gen}.npy"), mmap_mode="r")
            hashes = np.load(_plain(self.folder / f"hashes-{gen}.npy"))
        except (OSError, ValueError, KeyError) as exc:
            raise BankError(f"embedding cache {self.folder} is corrupt ({exc}); delete that folder "
                            "and the vectors will be recomputed") from exc
        if info.get("model_id") != self.model_id or vectors.shape[0] != hashes.shape[0]:
            raise BankError(f"embedding cache {self.folder} is inconsistent; delete that folder "
                            "and the vectors will be recomputed")
        self._vectors, self._hashes, self.generation = vectors, hashes, gen
        self.dim = int(vectors.shape[1])

    @property
    def count(self) -> int:
        return int(self._hashes.shape[0])

    def _idx(self) -> dict[bytes, int]:
        if self._index is None:
            self._index = {h: i for i, h in enumerate(self._hashes.tolist())}
        return self._index

    def has(self, image_sha256: str) -> bool:
        return image_sha256.encode() in self._idx()

    def get(self, hashes: list[str]) -> np.ndarray:
        """Vectors for ``hashes`` in that order (a memory map when they are the stored rows in order)."""
        if not hashes:
            return np.zeros((0, self.dim or 0), np.float32)
        idx = self._idx()
        try:
            rows = np.fromiter((idx[h.encode()] for h in hashes), dtype=np.int64, count=len(hashes))
        except KeyError as exc:
            raise BankError(f"no cached {self.model_id} embedding for image {exc.args[0]!r}") from None
        assert self._vectors is not None
        if rows.shape[0] == self.count and np.array_equal(rows, np.arange(self.count)):
            return self._vectors
        return np.asarray(self._vectors[rows])

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Append vectors for new hashes (under the bank lock when one was given)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(hashes):
            raise ValueError(f"expected {len(hashes)} vectors, got an array of shape {vectors.shape}")
        if self._lock is not None:
            with self._lock:
                self._add_locked(hashes, vectors)
        else:
            self._add_locked(hashes, vectors)

    def _add_locked(self, hashes: list[str], vectors: np.ndarray) -> None:
        self._load()  # another process may have added rows meanwhile
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise BankError(f"{self.model_id} vectors have {vectors.shape[1]} dimensions but the cache "
                            f"holds {self.dim}; the model changed without changing its id")
        idx, keep, seen = self._idx(), [], set()
        for i, h in enumerate(hashes):
            b = h.encode()
            if b not in idx and b not in seen:
                keep.append(i)
                seen.add(b)
        if not keep:
            return
        new_h = np.array([hashes[i].encode() for i in keep], dtype="S64")
        new_v = vectors[keep]
        old_v = np.asarray(self._vectors) if self._vectors is not None else np.zeros((0, new_v.shape[1]), np.float32)
        gen = self.generation + 1
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(self.folder / f"vectors-{gen}.npy", np.concatenate([old_v, new_v]))
        atomic_save_npy(self.folder / f"hashes-{gen}.npy", np.concatenate([self._hashes, new_h]))
        atomic_write_json(self.folder / "info.json", {"model_id": self.model_id, "dim": int(new_v.shape[1]),
                                                      "count": int(self.count + len(keep)), "generation": gen})
        old_gen = self.generation
        self._vectors = None
        self._load()
        for stale in self.folder.glob("*-*.npy"):
            m = re.fullmatch(r"(vectors|hashes)-(\d+)\.npy", stale.name)
            if m and int(m.group(2)) != gen and int(m.group(2)) <= old_gen:
                try:
                    stale.unlink()
                except OSError:
                    pass
