"""Batched augmentation on tensors: random affine (flips, rotation, scale, shift) and intensity changes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def augment(images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator,
            strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, 3, S, S) float [0, 1], masks (N, 1, S, S) {0, 1}; same geometry for an image and its mask."""
    n = images.shape[0]
    ang = np.deg2rad(rng.uniform(-20, 20, n) * strength)
    scale = np.exp(rng.uniform(-0.2, 0.2, n) * strength)
    flip_x = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    flip_y = np.where(rng.random(n) < 0.5 * strength, -1.0, 1.0)
    shift = rng.uniform(-0.1, 0.1, (n, 2)) * strength
    cos, sin = np.cos(ang) / scale, np.sin(ang) / scale
    # output -> input sampling map: rotation/scale, with the x and y columns flipped where drawn
    theta = torch.from_numpy(np.stack([np.stack([cos * flip_x, -sin * flip_y, shift[:, 0]], 1),
                                       np.stack([sin * flip_x, cos * flip_y, shift[:, 1]], 1)], 1)).float()
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = (F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()

    contrast = torch.from_numpy(np.exp(rng.uniform(-0.3, 0.3, n) * strength)).float().view(n, 1, 1, 1)
    bright = torch.from_numpy(rng.uniform(-0.1, 0.1, n) * strength).float().view(n, 1, 1, 1)
    gamma = torch.from_numpy(np.exp(rng.uniform(-0.4, 0.4, n) * strength)).float().view(n, 1, 1, 1)
    mean = images.mean((1, 2, 3), keepdim=True)
    images = ((images - mean) * contrast + mean + bright).clamp(0, 1) ** gamma
    noisy = torch.from_numpy(rng.random(n) < 0.3).view(n, 1, 1, 1)
    sigma = torch.from_numpy(rng.uniform(0, 0.05, n) * strength).float().view(n, 1, 1, 1)
    noise = torch.from_numpy(rng.standard_normal(images.shape, dtype=np.float32))
    images = torch.where(noisy, (images + sigma * noise).clamp(0, 1), images)
    return images, masks

