"""Synthetic segmentation tasks (as UniverSeg trains with), so the model learns to *use* its supports.

Each task has a random style (grayscale or tinted, background texture, object contrast and texture, size
range, distractors of another kind); a query and its supports are drawn from the same task, so the only way
to know which blobs are "foreground" is to look at the supports.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from ..metrics import dice


def _blob(size: int, rng: np.random.Generator, r_range: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    a = rng.uniform(*r_range) * size
    b = a * rng.uniform(0.5, 1.0)
    t = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
    v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
    th = np.arctan2(v / b, u / a)
    wob = 1 + sum(rng.uniform(0, 0.15) * np.cos(k * th + rng.uniform(0, 6.3)) for k in (2, 3, 4))
    return (u / a) ** 2 + (v / b) ** 2 <= wob ** 2


def _texture(size: int, rng: np.random.Generator, sigma: float) -> np.ndarray:
    t = ndi.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return t / (np.abs(t).max() + 1e-6)


def synthetic_task(rng: np.random.Generator, n_images: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_images`` (image, mask) pairs of one random task: (n, 3, S, S) float [0, 1], (n, 1, S, S) {0, 1}."""
    bg_level = rng.uniform(0.2, 0.8)
    fg_delta = rng.choice([-1, 1]) * rng.uniform(0.12, 0.4)
    distract_delta = -fg_delta * rng.uniform(0.5, 1.0)
    bg_sigma, fg_sigma = rng.uniform(1, 8), rng.uniform(0.5, 4)
    bg_amp, fg_amp = rng.uniform(0.02, 0.15), rng.uniform(0.0, 0.12)
    speckle = rng.uniform(0, 0.5) if rng.random() < 0.4 else 0.0
    tint = np.ones(3, np.float32) if rng.random() < 0.5 else rng.uniform(0.5, 1.2, 3).astype(np.float32)
    fg_tint = tint if rng.random() < 0.5 else rng.uniform(0.4, 1.2, 3).astype(np.float32)
    r_range = (rng.uniform(0.05, 0.15), rng.uniform(0.16, 0.3))
    n_obj = int(rng.integers(1, 3))
    distractors = rng.random() < 0.6
    imgs, masks = [], []
    for _ in range(n_images):
        gray = bg_level + bg_amp * _texture(size, rng, bg_sigma)
        mask = np.zeros((size, size), bool)
        for _ in range(n_obj):
            mask |= _blob(size, rng, r_range)
        if distractors:
            d = _blob(size, rng, r_range) & ~mask
            gray = gray + distract_delta * ndi.gaussian_filter(d.astype(np.float32), 1.0)
        soft = ndi.gaussian_filter(mask.astype(np.float32), rng.uniform(0.5, 2.0))
        gray = gray + soft * (fg_delta + fg_amp * _texture(size, rng, fg_sigma))
        if speckle:
            gray = gray * (1 - speckle + speckle * rng.rayleigh(0.8, (size, size)))
        rgb = gray[None] * (tint[:, None, None] * (1 - soft[None]) + fg_tint[:, None, None] * soft[None])
        imgs.append(np.clip(rgb, 0, 1).astype(np.float32))
        masks.append(mask[None].astype(np.float32))
    return torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(masks))


@torch.no_grad()
def support_use(model, rng: np.random.Generator, episodes: int = 64, k: int = 8) -> tuple[float, float]:
    """Mean Dice of ``model`` on synthetic tasks with the true support masks, and with them inverted.

    Only the supports say which kind of object is foreground, so a network that reads them scores far lower with
    inverted masks; one that ignores them scores the same. Used by ``benchmarks/support_use.py`` and the tests."""
    was_training = model.training
    model.eval()
    true, inverted = [], []
    for _ in range(episodes):
        imgs, masks = synthetic_task(rng, 1 + k, model.config.image_size)
        s, m, truth = imgs[None, 1:], masks[None, 1:], masks[0, 0].numpy() > 0.5
        true.append(dice(model(imgs[:1], s, m)[0, 0].numpy() > 0, truth))
        inverted.append(dice(model(imgs[:1], s, 1 - m)[0, 0].numpy() > 0, truth))
    model.train(was_training)
    return float(np.mean(true)), float(np.mean(inverted))
