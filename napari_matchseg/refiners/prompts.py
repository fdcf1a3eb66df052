"""SAM-Match's prompts: a proposal's confident pixels become a box and points for a SAM-style model.

From a probability map: keep pixels above ``threshold`` (the paper uses 0.95); take the largest confident
component's bounding box, enlarged by ``margin`` pixels (the SAMatch code uses 30 px on BUSI); put positive
points at interior maxima of its distance transform and negative points in confident background (below
1 - threshold) near the object; the refiner runs its model with box + points. A proposal with no confident
foreground passes through unchanged, with the reason.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage as ndi


@dataclasses.dataclass
class Prompts:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in pixels
    points: np.ndarray  # (N, 2) x, y
    labels: np.ndarray  # (N,) 1 = foreground, 0 = background


@dataclasses.dataclass
class Refinement:
    mask: np.ndarray  # (H, W) bool
    prompts: Prompts | None
    refined: bool
    reason: str
    score: float | None = None


def _spread_points(candidates: np.ndarray, weights: np.ndarray, n: int, min_dist: float) -> list[tuple[int, int]]:
    """Greedy: best-weighted candidate first, then the next best at least ``min_dist`` from those taken."""
    order = np.argsort(-weights, kind="stable")
    taken: list[tuple[int, int]] = []
    for i in order:
        y, x = candidates[i]
        if all((y - ty) ** 2 + (x - tx) ** 2 >= min_dist ** 2 for ty, tx in taken):
            taken.append((int(y), int(x)))
            if len(taken) == n:
                break
    return taken


def extract_prompts(prob: np.ndarray, threshold: float = 0.95, margin: int = 30, n_positive: int = 3,
                    n_negative: int = 3) -> tuple[Prompts | None, str]:
    """Prompts from a probability map, or None and why there are none."""
    prob = np.asarray(prob, np.float32)
    if prob.ndim != 2:
        raise ValueError(f"expected a 2D probability map, got shape {prob.shape}")
    if not 0.5 < threshold < 1:
        raise ValueError(f"threshold must be in (0.5, 1), got {threshold}")
    confident = prob >= threshold
    if not confident.any():
        reason = ("empty proposal" if prob.max() < 0.5
                  else f"no pixel is confident (max probability {prob.max():.2f} < {threshold})")
        return None, reason
    labels, n = ndi.label(confident)
    sizes = ndi.sum(confident, labels, index=np.arange(1, n + 1))
    obj = labels == (int(np.argmax(sizes)) + 1)
    ys, xs = np.nonzero(obj)
    h, w = prob.shape
    box = np.array([max(0, xs.min() - margin), max(0, ys.min() - margin),
                    min(w - 1, xs.max() + margin), min(h - 1, ys.max() + margin)], np.float32)
    dist = ndi.distance_transform_edt(obj)
    peaks = (dist == ndi.maximum_filter(dist, size=5)) & obj
    cand = np.argwhere(peaks)
    pos = _spread_points(cand, dist[peaks], n_positive, max(2.0, dist.max() / 2))
    background = prob <= 1 - threshold
    x0, y0, x1, y1 = box.astype(int)
    near = np.zeros_like(background)
    near[y0:y1 + 1, x0:x1 + 1] = True
    neg_region = background & near & ~obj
    if not neg_region.any():
        neg_region = background
    neg = []
    if neg_region.any():
        d_obj = ndi.distance_transform_edt(~obj)
        cand = np.argwhere(neg_region)
        # closest confident background to the object first: the most informative negatives
        neg = _spread_points(cand, -d_obj[neg_region], n_negative, max(4.0, min(h, w) / 16))
    pts = np.array([[x, y] for y, x in pos + neg], np.float32)
    lab = np.array([1] * len(pos) + [0] * len(neg), np.int32)
    return Prompts(box, pts, lab), f"{len(pos)} positive, {len(neg)} negative points and a box"
