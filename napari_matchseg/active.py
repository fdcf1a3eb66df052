"""Which image to label next: the ones the bank covers worst; which proposal to review next: the least sure one.

Two signals, both in [0, 1]: how far an image is from its nearest reference (1 - cosine similarity of the
retrieval vectors, halved), and how unsure its current proposal is (mean of 1 - |2p - 1| over the pixels).
Images without a proposal count only the first. Higher score = more useful to label next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .bank import ReferenceBank
from .retrieval import Retriever


@dataclasses.dataclass(frozen=True)
class Suggestion:
    index: int
    score: float
    distance: float
    uncertainty: float | None


def uncertainty(prob: np.ndarray) -> float:
    p = np.asarray(prob, np.float32)
    return float(np.mean(1 - np.abs(2 * p - 1)))


def proposal_confidence(prob: np.ndarray) -> float:
    """How sure a proposal is of the object it found: mean ``max(p, 1 - p)`` over its foreground pixels; 0 for
    an empty proposal (nothing found is the first thing to review)."""
    p = np.asarray(prob, np.float32)
    fg = p >= 0.5
    return float(np.maximum(p, 1 - p)[fg].mean()) if fg.any() else 0.0


def review_order(confidences: dict[int | None, float]) -> list[tuple[int | None, float]]:
    """Proposals to review, least sure first (ties by slice)."""
    return sorted(confidences.items(), key=lambda kv: (kv[1], -1 if kv[0] is None else kv[0]))


def rank_unlabelled(bank: ReferenceBank, retriever: Retriever, images: Sequence[np.ndarray],
                    candidates: Sequence[int], probabilities: dict[int, np.ndarray] | None = None,
                    weight_uncertainty: float = 0.5, progress=None, cancel=None) -> list[Suggestion]:
    """Rank ``candidates`` (indices into ``images``), most useful to label first."""
    probabilities = probabilities or {}
    if not candidates:
        return []
    q = retriever.embed([images[i] for i in candidates], cancel=cancel)
    if len(bank):
        refs = bank.embeddings(retriever, progress=progress, cancel=cancel)
        nearest = (np.asarray(refs) @ q.T).max(axis=0)
        distance = np.clip((1 - nearest) / 2, 0, 1)
    else:
        distance = np.ones(len(candidates), np.float32)
    out = []
    for j, i in enumerate(candidates):
        u = uncertainty(probabilities[i]) if i in probabilities else None
        score = float(distance[j]) + (weight_uncertainty * u if u is not None else 0.0)
        out.append(Suggestion(int(i), score, float(distance[j]), u))
    return sorted(out, key=lambda s: -s.score)
