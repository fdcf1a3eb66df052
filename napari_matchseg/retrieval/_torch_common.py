"""Shared plumbing of the neural retrievers: batching images into normalised tensors, fingerprints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..device import half_dtype
from ..errors import WeightsError
from ..image_io import check_image, reduce_for_model, to_float_rgb


def to_batch(images, size: int, mean, std, device: torch.device) -> torch.Tensor:
    """Images -> (B, 3, size, size) float tensor, grayscale replicated to RGB, mean/std normalised."""
    tensors = []
    for im in images:
        t = torch.from_numpy(to_float_rgb(reduce_for_model(check_image(im)))).permute(2, 0, 1)[None]
        tensors.append(F.interpolate(t, size=(size, size), mode="bicubic", antialias=True,
                                     align_corners=False).clamp_(0, 1))
    x = torch.cat(tensors).to(device)
    m = torch.tensor(mean, dtype=x.dtype, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=device).view(1, 3, 1, 1)
    return (x - m) / s


@torch.inference_mode()
def run_encoder(fn, x: torch.Tensor) -> np.ndarray:
    """``fn(x)`` under reduced-precision autocast where the device supports it, as float32 numpy."""
    dtype = half_dtype(x.device)
    if dtype is not None:
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = fn(x)
    else:
        out = fn(x)
    return out.float().cpu().numpy()


def file_fingerprint(path: str | Path) -> str:
    """Cheap identity of a large weights file (size + first and last 4 MB), for cache keys."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"checkpoint file {path} does not exist; check the path")
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 22))
        if size > 1 << 23:
            f.seek(-(1 << 22), 2)
            h.update(f.read())
    return h.hexdigest()[:12]
