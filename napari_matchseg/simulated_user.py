"""A simulated annotator for interactive evaluation (no Qt, no torch): deterministic, so runs are comparable.

The click rule (as in RITM's and SimpleClick's evaluations): click at the centre of the largest error region, the
point farthest from its border; a positive click where the object was missed, a negative one where the mask
spills over. NoC@x is the number of clicks until Dice reaches x (``max_clicks`` when it never does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from .metrics import dice

REPORTED_CLICKS = (1, 3, 5)  # Dice after this many clicks is reported


def next_click(pred: np.ndarray, truth: np.ndarray) -> list[float] | None:
    """``[x, y, 1 = positive / 0 = negative]`` at the centre of the largest error region; None without error."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    best = None
    for error, label in ((truth & ~pred, 1), (pred & ~truth, 0)):
        lab, count = ndimage.label(error)
        if count:
            sizes = np.bincount(lab.ravel())[1:]
            r = int(sizes.argmax())
            if best is None or sizes[r] > best[0]:
                best = (int(sizes[r]), lab == r + 1, label)
    if best is None:
        return None
    region = np.pad(best[1], 1)  # the image border counts as the region's border
    depth = ndimage.distance_transform_edt(region)[1:-1, 1:-1]
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    return [float(x), float(y), best[2]]


def simulate(predict: Callable[[list[list[float]]], np.ndarray], truth: np.ndarray, max_clicks: int = 20,
             first: np.ndarray | None = None, target: float = 0.9) -> list[float]:
    """Dice after 0, 1, ..., ``max_clicks`` clicks (index = clicks). ``predict(points)`` returns the mask for the
    clicks so far; ``first``: the mask before any click (None: nothing). Clicks go on until Dice reaches ``target``
    and at least the largest of :data:`REPORTED_CLICKS` were made (or there is no error left); later entries keep
    the last value, as a user who stops there."""
    truth = np.asarray(truth, bool)
    pred = np.zeros(truth.shape, bool) if first is None else np.asarray(first, bool)
    dices = [dice(pred, truth)]
    points: list[list[float]] = []
    while len(points) < max_clicks and (dices[-1] < target or len(points) < max(REPORTED_CLICKS)):
        click = next_click(pred, truth)
        if click is None:
            break
        points.append(click)
        pred = np.asarray(predict([list(p) for p in points]), bool)
        dices.append(dice(pred, truth))
    return dices + [dices[-1]] * (max_clicks + 1 - len(dices))


def clicks_to_reach(dices: Sequence[float], target: float) -> int:
    """NoC@target from :func:`simulate`'s curve: 0 when the proposal already reaches it, ``max_clicks`` (its last
    index) when the clicks never do."""
    for n, d in enumerate(dices):
        if d >= target:
            return n
    return len(dices) - 1


__all__ = ["next_click", "simulate", "clicks_to_reach", "REPORTED_CLICKS"]
