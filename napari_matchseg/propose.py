"""Proposals for a query image: retrieve supports from the bank, then run a proposer (and a refiner) on them.

The function-level API; :class:`~napari_matchseg.pipeline.Pipeline` builds the models from a config and calls it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from .bank import ReferenceBank
from .errors import InputError, ReferenceNotFound
from .image_io import check_image
from .retrieval import Match, Retriever, retrieve


@dataclasses.dataclass
class Proposal:
    probability: np.ndarray  # (H, W) float32 in [0, 1]
    supports: list[Match]  # the references used, best first, with their similarity
    refined_mask: np.ndarray | None = None  # set by a SAM 2 refinement (SAM-Match)
    note: str = ""

    def mask(self, threshold: float = 0.5) -> np.ndarray:
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold must be between 0 and 1 (a probability), got {threshold}")
        if self.refined_mask is not None:
            return self.refined_mask
        return self.probability >= threshold


def attach_bank(predictor, bank: ReferenceBank) -> None:
    """Let the proposer read and write its per-reference features in the bank."""
    from .feature_cache import FeatureCache  # torch: not at import (the command line's parser needs none)

    predictor.attach_cache(FeatureCache(bank.path, predictor.model_id))


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


def propose(bank: ReferenceBank | None, image: np.ndarray, *, retriever: Retriever, predictor,
            k: int = 8, exclude: Iterable[str] = (), strategy: str = "retrieved",
            rng: np.random.Generator | None = None, progress: Callable[[int, int], None] | None = None,
            cancel: Callable[[], bool] | None = None, refiner=None, refine_threshold: float = 0.95,
            refine_margin: int = 30, prompts: dict | None = None) -> Proposal:
    """A probability map for ``image`` from its ``k`` most similar references (``predictor``: any proposer),
    optionally refined by SAM 2 prompts (``refiner``: a :class:`~napari_matchseg.refiners.sam2.Sam2Refiner`)."""
    img = check_image(image)
    if not 0 <= k <= 32:
        raise InputError(f"k must be between 0 and 32, got {k}")
    if k < predictor.min_k:
        raise InputError(f"the {predictor.name} proposer needs at least {predictor.min_k} reference(s); use -k "
                         f"{predictor.min_k} or more")
    optional = predictor.min_k == 0  # no references is fine (an empty or no bank: prompts alone)
    if bank is None and predictor.uses_supports and k and not optional:
        raise InputError(f"the {predictor.name} proposer proposes from references: open a bank (--bank)")
    store = predictor.feature_store
    if bank is not None and (store is None or getattr(store, "bank_path", None) != bank.path):
        attach_bank(predictor, bank)
    matches: list[Match] = []
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for attempt in range(2):
        if predictor.uses_supports and k and not (optional and (bank is None or not len(bank))):
            matches = select_supports(bank, retriever, img, k, exclude, strategy, rng, progress, cancel)
        try:
            images, masks = [bank.load_image(m.id) for m in matches], [bank.load_mask(m.id) for m in matches]
            break
        except ReferenceNotFound:  # another process removed a support meanwhile: choose again, once
            if attempt:
                raise
    prob = predictor.predict(img, images, masks, prompts=prompts)
    proposal = Proposal(prob, matches)
    if refiner is not None:
        r = refiner.refine(img, prob, threshold=refine_threshold, margin=refine_margin)
        proposal.refined_mask, proposal.note = (r.mask if r.refined else None), r.reason
    return proposal
