"""Top-k retrieval of bank references for a query image."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from ..bank import ReferenceBank
from ..image_io import check_image, content_hash
from .base import Retriever, top_k


@dataclasses.dataclass(frozen=True)
class Match:
    id: str
    score: float


def retrieve(bank: ReferenceBank, retriever: Retriever, image, k: int = 8, exclude: Iterable[str] = (),
             progress: Callable[[int, int], None] | None = None,
             cancel: Callable[[], bool] | None = None) -> list[Match]:
    """The ``k`` references most similar to ``image`` (cosine), best first, never those in ``exclude``.

    Embeds whatever part of the bank is not cached yet (with ``progress``), and the query unless it
    is itself a bank image, whose cached vector is then reused.
    """
    img = check_image(image)
    vectors = bank.embeddings(retriever, progress=progress, cancel=cancel)
    ids = bank.ids()
    store = bank.embedding_store(retriever.model_id)
    h = content_hash(img)
    q = store.get([h])[0] if store.has(h) else retriever.embed_one(img)
    excluded = set(exclude)
    mask = np.fromiter((i in excluded for i in ids), dtype=bool, count=len(ids)) if excluded else None
    idx, scores = top_k(vectors, q, k, mask)
    return [Match(ids[i], float(s)) for i, s in zip(idx, scores)]
