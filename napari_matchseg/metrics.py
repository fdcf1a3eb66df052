"""Segmentation metrics on binary masks: Dice, IoU and the 95th-percentile Hausdorff distance.

Empty masks: when both prediction and ground truth are empty, Dice = IoU = 1 and HD95 = 0 (nothing to find,
nothing found); when exactly one is empty, Dice = IoU = 0 and HD95 is NaN (undefined; excluded from
means, counted separately).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    s = p.sum() + g.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(p, g).sum() / s)


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    u = np.logical_or(p, g).sum()
    return 1.0 if u == 0 else float(np.logical_and(p, g).sum() / u)


def _surface(m: np.ndarray) -> np.ndarray:
    return m & ~ndi.binary_erosion(m, border_value=0)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: float = 1.0) -> float:
    """Symmetric 95th-percentile Hausdorff distance in pixels (times ``spacing``)."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if not p.any() and not g.any():
        return 0.0
    if not p.any() or not g.any():
        return float("nan")
    sp, sg = _surface(p), _surface(g)
    dt_g = ndi.distance_transform_edt(~sg)
    dt_p = ndi.distance_transform_edt(~sp)
    d = np.concatenate([dt_g[sp], dt_p[sg]])
    return float(np.percentile(d, 95) * spacing)


def all_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    return {"dice": dice(pred, gt), "iou": iou(pred, gt), "hd95": hd95(pred, gt)}
