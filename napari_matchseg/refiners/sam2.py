"""SAM-Match refinement with SAM 2: the proposal's confident pixels become prompts, SAM 2's mask the refined one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..image_io import check_image, to_float_rgb
from ..sam2_configs import DEFAULT_SAM2
from .prompts import Refinement, extract_prompts


class Sam2Refiner:
    """Wraps the official ``SAM2ImagePredictor`` around a model from :func:`build_sam2_model` (``model``: one
    already built, e.g. the SAM 2 proposer's, shared instead of loading a second copy)."""

    name = "sam2"

    def __init__(self, model_name: str = DEFAULT_SAM2, checkpoint: str | Path | None = None,
                 device: str | None = "auto", image_size: int = 1024, model=None):
        from ..sam2_model import build_sam2_model

        model = model if model is not None else build_sam2_model(model_name, checkpoint, device, image_size)
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.predictor = SAM2ImagePredictor(model)
        size = int(model.image_size)
        if size != 1024:  # the image predictor assumes 1024 px; give it this model's feature grid
            self.predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]

    def refine(self, image: np.ndarray, prob: np.ndarray, threshold: float = 0.95, margin: int = 30,
               n_positive: int = 3, n_negative: int = 3) -> Refinement:
        img = check_image(image)
        if prob.shape != img.shape[:2]:
            raise ValueError(f"probability map {prob.shape} and image {img.shape[:2]} differ in size")
        prompts, reason = extract_prompts(prob, threshold, margin, n_positive, n_negative)
        if prompts is None:
            return Refinement(prob >= 0.5, None, False, f"not refined: {reason}")
        import torch

        from ..tensors import autocast

        rgb = (to_float_rgb(img) * 255).round().astype(np.uint8)
        dev = self.predictor.model.device
        with torch.inference_mode(), autocast(dev, torch.bfloat16 if dev.type == "cuda" else None):
            self.predictor.set_image(rgb)
            masks, scores, _ = self.predictor.predict(point_coords=prompts.points, point_labels=prompts.labels,
                                                      box=prompts.box, multimask_output=False)
        return Refinement(np.asarray(masks[0]) > 0, prompts, True, f"refined with {reason}", float(scores[0]))
