"""The ``litemedsam`` proposer: a mask from a user's boxes and points alone (an empty bank is fine).

With references, LiteMedSAM still needs a box to start from: that is the MatchSeg proposal refined by it
(``--refine litemedsam``).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .base import Proposer


class OnLiteMedSam(Proposer):
    """A proposer on LiteMedSAM's network: one network and one embedding per image, shared with the refiner,
    the retriever and the plugin's prompt tools of the same family (``shared_model``)."""

    takes_prompts = True

    def __init__(self, device: str | None = "auto", model=None):
        """``model``: a LiteMedSamPredictor to use (shared with a refiner, or built here)."""
        from ..litemedsam import LiteMedSamPredictor

        self.predictor = model if model is not None else LiteMedSamPredictor(device)
        self.model_id = self.predictor.model_id

    def attach_cache(self, store) -> None:
        self.predictor.attach_cache(store)

    @property
    def feature_store(self):
        return self.predictor.store

    def shared_model(self, family: str):
        return self.predictor if family == "litemedsam" else None

    def warm(self, image: np.ndarray) -> bool:
        self.predictor.embedding(image)  # thread-safe: a proposal asking meanwhile waits for this result
        return True


class LiteMedSamProposer(OnLiteMedSam):
    name = "litemedsam"
    uses_supports = False

    def predict_batch(self, images, supports, prompts=None):
        prompts = prompts or [None] * len(images)
        return [self._predict(image, p)[0] for image, p in zip(images, prompts)]

    def predict_with_quality(self, image, support_images=(), support_masks=(), prompts=None):
        """The probability and the decoder's predicted IoU of its mask."""
        prob, iou = self._predict(image, prompts)
        return prob, float(iou)

    def _predict(self, image, prompts):
        p = prompts or {}
        if not (p.get("boxes") or p.get("points")):
            raise InputError("the litemedsam proposer segments from prompts: give each image a box or points "
                             '(--prompts FILE.json: {"image.png": {"boxes": [[x0, y0, x1, y1]], '
                             '"points": [[x, y, 1]]}})')
        return self.predictor.predict(image, boxes=p.get("boxes"), points=p.get("points"))
