"""SAM-Match refinement with LiteMedSAM's real weights: the proposal's confident pixels become a box and points.

Refinement is gated: a refined mask replaces the proposal only when it agrees with the proposal's own mask
(Dice at least ``min_agreement``). A refinement that finds another object (a proposal in the wrong place gives
LiteMedSAM a box around the wrong thing, which it then segments well) is thrown away with the reason.

The defaults were chosen on the val splits of the nine shared datasets (docs/litemedsam.md): the box alone (no
points: LiteMedSAM was trained with box prompts, and points lowered Dice on every dataset), a margin of 5 % of
the image's longer side, a gate of 0.85.
"""

from __future__ import annotations

import numpy as np

from ..image_io import check_image
from ..metrics import dice
from .prompts import Refinement, extract_prompts


class LiteMedSamRefiner:
    name = "litemedsam"

    def __init__(self, device: str | None = "auto", model=None, min_agreement: float = 0.85, use_points: bool = False,
                 margin_fraction: float | None = 0.05):
        """``model``: a LiteMedSamPredictor to share (e.g. the litemedsam proposer's); else one is built.
        ``margin_fraction``: the box margin as a fraction of the image's longer side (None: ``refine``'s pixels)."""
        from ..litemedsam import LiteMedSamPredictor

        self.predictor = model if model is not None else LiteMedSamPredictor(device)
        self.min_agreement, self.use_points, self.margin_fraction = min_agreement, use_points, margin_fraction

    def refine(self, image: np.ndarray, prob: np.ndarray, threshold: float = 0.95, margin: int = 30,
               n_positive: int = 3, n_negative: int = 3) -> Refinement:
        img = check_image(image)
        if prob.shape != img.shape[:2]:
            raise ValueError(f"probability map {prob.shape} and image {img.shape[:2]} differ in size")
        proposal = prob >= 0.5
        if self.margin_fraction is not None:
            margin = int(round(self.margin_fraction * max(img.shape[:2])))
        prompts, reason = extract_prompts(prob, threshold, margin, n_positive, n_negative)
        if prompts is None:
            return Refinement(proposal, None, False, f"not refined: {reason}")
        points = None
        if self.use_points and len(prompts.points):
            points = np.concatenate([prompts.points, prompts.labels[:, None]], 1)
        refined_prob, score = self.predictor.predict(img, boxes=[prompts.box], points=points)
        refined = refined_prob >= 0.5
        agreement = dice(refined, proposal)
        if agreement < self.min_agreement:
            return Refinement(proposal, prompts, False, f"not refined: LiteMedSAM's mask agrees with the proposal "
                                                       f"only {agreement:.2f} (< {self.min_agreement})", score)
        return Refinement(refined, prompts, True, f"refined with {reason}", score)
