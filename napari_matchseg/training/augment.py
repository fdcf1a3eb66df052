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


def strong_photometric(images: torch.Tensor, rng: np.random.Generator, cutout: float = 0.35
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's strong view, geometry unchanged: strong contrast/brightness/gamma, blur or noise, and one
    cut-out box per image. Returns the images and a keep-map (N, 1, S, S): 0 inside the cut-out, where the
    image no longer shows what the label says, so the loss ignores those pixels."""
    n, _, h, w = images.shape
    contrast = torch.from_numpy(np.exp(rng.uniform(-0.6, 0.6, n))).float().view(n, 1, 1, 1)
    bright = torch.from_numpy(rng.uniform(-0.2, 0.2, n)).float().view(n, 1, 1, 1)
    gamma = torch.from_numpy(np.exp(rng.uniform(-0.6, 0.6, n))).float().view(n, 1, 1, 1)
    mean = images.mean((1, 2, 3), keepdim=True)
    out = ((images - mean) * contrast + mean + bright).clamp(0, 1) ** gamma
    blurred = F.avg_pool2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    blur = torch.from_numpy(rng.random(n) < 0.3).view(n, 1, 1, 1)
    out = torch.where(blur, blurred, out)
    sigma = torch.from_numpy(rng.uniform(0, 0.08, n)).float().view(n, 1, 1, 1)
    out = (out + sigma * torch.from_numpy(rng.standard_normal(out.shape, dtype=np.float32))).clamp(0, 1)
    keep = torch.ones(n, 1, h, w)
    for i in range(n):
        if rng.random() < 0.5:
            ch, cw = int(h * rng.uniform(0.1, cutout)), int(w * rng.uniform(0.1, cutout))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            out[i, :, y:y + ch, x:x + cw] = out[i].mean()
            keep[i, :, y:y + ch, x:x + cw] = 0
    return out, keep


def cutmix(images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator, p: float = 0.5,
           area: tuple[float, float] = (0.1, 0.4)) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix across a batch (French et al. 2020, "Semi-supervised semantic segmentation needs strong, varied
    perturbations"): with probability ``p`` each image gets one box, of ``area`` of the image, pasted from
    another image of the batch, and its label maps (N, C, S, S: the mask, where it counts...) get the same box
    from that image's labels, so every pixel keeps the label of the image it shows. No draws when ``p`` is 0."""
    n, _, h, w = images.shape
    if p <= 0 or n < 2:
        return images, labels
    mixed_images, mixed_labels = images.clone(), labels.clone()
    for i in range(n):
        if rng.random() >= p:
            continue
        j = (i + 1 + int(rng.integers(n - 1))) % n  # any other image of the batch
        a, aspect = rng.uniform(*area), np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        ch = min(h, max(1, int(round(h * np.sqrt(a * aspect)))))
        cw = min(w, max(1, int(round(w * np.sqrt(a / aspect)))))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        mixed_images[i, :, y:y + ch, x:x + cw] = images[j, :, y:y + ch, x:x + cw]
        mixed_labels[i, :, y:y + ch, x:x + cw] = labels[j, :, y:y + ch, x:x + cw]
    return mixed_images, mixed_labels
