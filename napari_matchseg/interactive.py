"""A user's clicks and boxes on one image as a mask: the core of the plugin's prompt tools (no Qt here).

What the user gives, and what LiteMedSAM (trained with box prompts) is asked:

* one or more boxes (and any clicks): the boxes, the clicks as corrections on each of them;
* clicks only, on an image that has a proposal: the box around the proposal (5 % margin) and the clicks, so a
  click corrects the proposal instead of starting from nothing;
* clicks only, and no proposal: the clicks alone (a first mask; a box gives a much better one).

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


def prompted_mask(predictor, image: np.ndarray, prompts: Prompts, proposal: np.ndarray | None = None,
                  threshold: float = 0.5) -> tuple[np.ndarray, float, str]:
    """(probability, the decoder's IoU estimate, what was used) for ``prompts`` on ``image``; ``proposal``: the
    slice's probability before any prompt (its box is used when the user drew none)."""
    if not prompts:
        raise InputError("no prompt on this image: click on the object or draw a box")
    boxes, how = prompts.boxes, f"{len(prompts.boxes)} box(es)"
    if not boxes and proposal is not None and (np.asarray(proposal) >= threshold).any():
        boxes, how = [_union_box(np.asarray(proposal) >= threshold)], "the proposal's box"
    elif not boxes:
        how = "clicks only (draw a box for a better mask)"
    prob, iou = predictor.predict(image, boxes=boxes or None, points=prompts.points or None)
    n_pos = sum(p[2] == 1 for p in prompts.points)
    return prob, iou, f"{how}, {n_pos} positive and {len(prompts.points) - n_pos} negative clicks"


def _union_box(mask: np.ndarray, margin: float = 0.05) -> list[float]:
    ys, xs = np.nonzero(mask)
    m = margin * max(np.ptp(ys), np.ptp(xs), 1)
    h, w = mask.shape
    return [max(0.0, xs.min() - m), max(0.0, ys.min() - m), min(w - 1.0, xs.max() + m), min(h - 1.0, ys.max() + m)]


__all__ = ["Prompts", "slice_prompts", "prompted_mask"]
