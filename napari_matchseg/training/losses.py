"""MatchSeg's composite loss: Dice + BCE + Focal, with an optional per-pixel weight (0 = ignore)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                      focal_gamma: float = 2.0, smooth: float = 1.0) -> torch.Tensor:
    """logits/target/weight (B, 1, H, W); pixels with weight 0 contribute nothing to any term."""
    w = torch.ones_like(target) if weight is None else weight
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    denom = w.sum().clamp_min(1.0)
    bce_term = (bce * w).sum() / denom
    p = torch.sigmoid(logits)
    pt = p * target + (1 - p) * (1 - target)
    focal_term = ((1 - pt) ** focal_gamma * bce * w).sum() / denom
    inter = (p * target * w).sum((1, 2, 3))
    card = ((p + target) * w).sum((1, 2, 3))
    dice_term = (1 - (2 * inter + smooth) / (card + smooth)).mean()
    return bce_term + dice_term + focal_term
