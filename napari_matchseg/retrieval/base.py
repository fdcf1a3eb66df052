"""What every retriever does: images in, L2-normalised vectors out; cosine top-k over a bank."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

from ..errors import Cancelled

ProgressFn = Callable[[int, int], None]


def l2_normalize(v: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), eps)


class Retriever(ABC):
    """Embeds 2D images (any dtype/channels accepted by :func:`image_io.check_image`).

    Subclasses implement :meth:`_embed_batch` and give a ``model_id`` that changes whenever the
    vectors would change (architecture, weights, preprocessing), since it keys the bank's cache.
    """

    name: ClassVar[str]
    batch_size: int = 16

    @property
    @abstractmethod
    def model_id(self) -> str: ...

    @abstractmethod
    def _embed_batch(self, images: list[np.ndarray]) -> np.ndarray:
        """(B, D) float vectors for a list of checked images (need not be normalised)."""

    def embed(self, images: Sequence[np.ndarray], *, progress: ProgressFn | None = None,
              cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """(N, D) float32 L2-normalised vectors; ``cancel()`` returning True stops between batches."""
        n = len(images)
        out = []
        for start in range(0, n, self.batch_size):
            if cancel is not None and cancel():
                raise Cancelled(f"embedding cancelled after {start} of {n} images")
            batch = [images[i] for i in range(start, min(n, start + self.batch_size))]
            out.append(np.asarray(self._embed_batch(batch), dtype=np.float32))
            if progress is not None:
                progress(min(n, start + self.batch_size), n)
        if not out:
            return np.zeros((0, 0), np.float32)
        return l2_normalize(np.concatenate(out))

    def embed_one(self, image: np.ndarray) -> np.ndarray:
        return self.embed([image])[0]

    def shared_model(self, family: str):
        """A loaded model a proposer or refiner of ``family`` may reuse (None: there is none)."""
        return None


def top_k(vectors: np.ndarray, query: np.ndarray, k: int,
          exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine scores of the ``k`` rows of ``vectors`` most similar to ``query``, best first.

    ``vectors`` (N, D) and ``query`` (D,) are L2-normalised; ``exclude`` is a bool mask (N,) or an
    index array of rows never to return. Cost: one matrix-vector product plus an O(N) partition.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n = vectors.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if query.shape[-1] != vectors.shape[1]:
        raise ValueError(f"query has {query.shape[-1]} dimensions but the bank vectors have {vectors.shape[1]}")
    scores = vectors @ np.asarray(query, dtype=vectors.dtype)
    if exclude is not None and len(exclude):
        scores = np.array(scores, copy=True)
        scores[exclude] = -np.inf
    k = min(k, n)
    idx = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    idx = idx[np.isfinite(scores[idx])]
    return idx.astype(np.int64), scores[idx].astype(np.float32)
