"""A user's clicks and boxes on one image as a mask: the core of the plugin's prompt tools (no Qt here).

What the user gives, and what LiteMedSAM (trained with box prompts) is asked:

* one or more boxes (and any clicks): the boxes, the clicks as corrections on each of them;
* clicks only: candidate boxes - the box around the proposal (5 % margin) when there is one, and boxes of 10, 20,
  35 and 50 % of the image's longer side around the positive clicks - each decoded with all the clicks in one
  batch; the decoder's IoU estimate picks one. So a click corrects a good proposal, and a positive click on an
  object the proposal missed starts from the click instead of the proposal's (wrong) box;
* negative clicks only, and no proposal: the clicks alone.

napari's layers hold coordinates as (row, col) — (z, row, col) in a stack — and prompts are (x, y) in the image's
pixels: :func:`slice_prompts` converts, keeping only the current slice's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .errors import InputError


@dataclasses.dataclass
class Prompts:
    points: list[list[float]]  # [[x, y, 1 or 0], ...]
    boxes: list[list[float]]  # [[x0, y0, x1, y1], ...]

    def __bool__(self) -> bool:
        return bool(self.points or self.boxes)


def slice_prompts(points: np.ndarray, labels: Sequence[int], rectangles: Sequence[np.ndarray], index: int | None,
                  shape: tuple[int, int]) -> Prompts:
    """The prompts on slice ``index`` (None: a 2D image) from a Points layer's data and labels and a Shapes
    layer's rectangles (each its corner coordinates), clipped to the image."""
    h, w = shape
    pts = []
    for coord, label in zip(np.asarray(points, float) if len(points) else [], labels):
        if index is not None and (len(coord) < 3 or int(round(coord[-3])) != index):
            continue
        y, x = coord[-2], coord[-1]
        if 0 <= x < w and 0 <= y < h:
            pts.append([float(x), float(y), 1 if label else 0])
    boxes = []
    for rect in rectangles:
        rect = np.asarray(rect, float)
        if index is not None and (rect.shape[1] < 3 or int(round(rect[0, -3])) != index):
            continue
        ys, xs = rect[:, -2], rect[:, -1]
        x0, x1 = np.clip([xs.min(), xs.max()], 0, w - 1)
        y0, y1 = np.clip([ys.min(), ys.max()], 0, h - 1)
        if x1 > x0 and y1 > y0:
            boxes.append([float(x0), float(y0), float(x1), float(y1)])
    return Prompts(pts, boxes)


CLICK_BOX_SIZES = (0.1, 0.2, 0.35, 0.5)  # of the image's longer side: boxes tried around the positive clicks
CLICK_RULES = ("choose", "proposal-box")  # docs/benchmarks.md compares them (proposal-box: the rule before)


def prompted_mask(predictor, image: np.ndarray, prompts: Prompts, proposal: np.ndarray | None = None,
                  threshold: float = 0.5, click_rule: str = "choose") -> tuple[np.ndarray, float, str]:
    """(probability, the decoder's IoU estimate, what was used) for ``prompts`` on ``image``; ``proposal``: the
    slice's probability before any prompt. Clicks without a box: see the module's docstring (``click_rule``
    "proposal-box": always the proposal's box when there is one, as before)."""
    if click_rule not in CLICK_RULES:
        raise InputError(f"unknown click rule {click_rule!r}; choose one of {', '.join(CLICK_RULES)}")
    if not prompts:
        raise InputError("no prompt on this image: click on the object or draw a box")
    n_pos = sum(p[2] == 1 for p in prompts.points)
    said = f"{n_pos} positive and {len(prompts.points) - n_pos} negative clicks"
    if prompts.boxes:
        prob, iou = predictor.predict(image, boxes=prompts.boxes, points=prompts.points or None)
        return prob, iou, f"{len(prompts.boxes)} box(es), {said}"
    has_proposal = proposal is not None and (np.asarray(proposal) >= threshold).any()
    candidates = [(_union_box(np.asarray(proposal) >= threshold), "the proposal's box")] if has_proposal else []
    if n_pos and not (has_proposal and click_rule == "proposal-box"):
        shape = np.asarray(image).shape[:2]
        candidates += [(_click_box(prompts.points, size, shape), "a box around your clicks")
                       for size in CLICK_BOX_SIZES]
    if not candidates:
        prob, iou = predictor.predict(image, points=prompts.points)
        return prob, iou, f"clicks only (draw a box for a better mask), {said}"
    points = np.asarray(prompts.points, float).reshape(-1, 3)
    probs, ious = predictor.predict_each(predictor.embedding(image), np.asarray([b for b, _ in candidates]),
                                         [points] * len(candidates))
    best = int(np.argmax(ious))
    return probs[best], float(ious[best]), f"{candidates[best][1]}, {said}"


def _click_box(points: Sequence[Sequence[float]], size: float, shape: tuple[int, int]) -> list[float]:
    """A box of ``size`` x the longer side around the positive clicks' centre, grown to hold every positive click."""
    pos = np.asarray([p[:2] for p in points if p[2] == 1], float)
    h, w = shape
    half = size * max(h, w) / 2
    cx, cy = pos.mean(axis=0)
    x0, y0 = min(cx - half, pos[:, 0].min() - 2), min(cy - half, pos[:, 1].min() - 2)
    x1, y1 = max(cx + half, pos[:, 0].max() + 2), max(cy + half, pos[:, 1].max() + 2)
    return [max(0.0, x0), max(0.0, y0), min(w - 1.0, x1), min(h - 1.0, y1)]


def _union_box(mask: np.ndarray, margin: float = 0.05) -> list[float]:
    ys, xs = np.nonzero(mask)
    m = margin * max(np.ptp(ys), np.ptp(xs), 1)
    h, w = mask.shape
    return [max(0.0, xs.min() - m), max(0.0, ys.min() - m), min(w - 1.0, xs.max() + m), min(h - 1.0, ys.max() + m)]


__all__ = ["Prompts", "slice_prompts", "prompted_mask", "CLICK_BOX_SIZES", "CLICK_RULES"]
