"""Proposals for a query image: retrieve supports from the bank, then run a proposer on them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from .bank import ReferenceBank
from .errors import InputError
from .feature_cache import FeatureCache
from .image_io import check_image
from .predictor import MatchSegPredictor
from .retrieval import Match, Retriever, retrieve

PROPOSERS = ("matchseg",)


@dataclasses.dataclass
class Proposal:
    probability: np.ndarray  # (H, W) float32 in [0, 1]
    supports: list[Match]  # the references used, best first, with their similarity

    def mask(self, threshold: float = 0.5) -> np.ndarray:
        return self.probability >= threshold


def attach_bank(predictor: MatchSegPredictor, bank: ReferenceBank) -> None:
    """Let the predictor read and write its support features in the bank."""
    store = FeatureCache(bank.path, predictor.model_id)
    store.bind(predictor.feature_shapes)
    predictor.feature_store = store


def select_supports(bank: ReferenceBank, retriever: Retriever, image: np.ndarray, k: int,
                    exclude: Iterable[str] = (), strategy: str = "retrieved",
                    rng: np.random.Generator | None = None, progress=None, cancel=None) -> list[Match]:
    """``retrieved`` (most similar first) or ``random`` (the ablation) supports from the bank."""
    if len(bank) == 0:
        raise InputError(f"bank {bank.path} is empty; add at least one labelled reference first")
    if strategy == "retrieved":
        return retrieve(bank, retriever, image, k=k, exclude=exclude, progress=progress, cancel=cancel)
    if strategy == "random":
        pool = [i for i in bank.ids() if i not in set(exclude)]
        rng = rng or np.random.default_rng(0)
        return [Match(i, float("nan")) for i in rng.choice(pool, size=min(k, len(pool)), replace=False)]
    raise InputError(f"support strategy must be 'retrieved' or 'random', not {strategy!r}")


def propose(bank: ReferenceBank, image: np.ndarray, *, retriever: Retriever, predictor: MatchSegPredictor,
            k: int = 8, exclude: Iterable[str] = (), strategy: str = "retrieved",
            rng: np.random.Generator | None = None, progress: Callable[[int, int], None] | None = None,
            cancel: Callable[[], bool] | None = None) -> Proposal:
    """A probability map for ``image`` from its ``k`` most similar references."""
    img = check_image(image)
    if not 1 <= k <= 32:
        raise InputError(f"k must be between 1 and 32, got {k}")
    if predictor.feature_store is None:
        attach_bank(predictor, bank)
    matches: list[Match] = []
    if predictor.uses_supports:
        matches = select_supports(bank, retriever, img, k, exclude, strategy, rng, progress, cancel)
    ids = [m.id for m in matches]
    prob = predictor.predict(img, [bank.load_image(i) for i in ids], [bank.load_mask(i) for i in ids])
    return Proposal(prob, matches)
