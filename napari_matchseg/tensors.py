"""The torch helpers every model shares: images to tensors, reduced-precision autocast, file fingerprints."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .device import half_dtype
from .errors import WeightsError
from .image_io import check_image, reduce_for_model, to_float_rgb


def autocast(device: torch.device, dtype: torch.dtype | None | str = "auto"):
    """Autocast to ``dtype`` on ``device`` (``"auto"``: :func:`~napari_matchseg.device.half_dtype`, i.e. bf16 or
    fp16 on a GPU, full precision on a CPU); a no-op context when there is nothing to cast to."""
    if dtype == "auto":
        dtype = half_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_working(image: np.ndarray, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [0, 1]: the MatchSeg input convention."""
    t = torch.from_numpy(to_float_rgb(reduce_for_model(check_image(image)))).permute(2, 0, 1)[None]
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].clamp_(0, 1)


def mask_to_working(mask: np.ndarray, size: int) -> torch.Tensor:
    """(1, size, size) float32 in {0, 1} (area-averaged, then thresholded at one half)."""
    t = torch.from_numpy(reduce_for_model(np.asarray(mask, np.float32)))[None, None]
    return (F.interpolate(t, size=(size, size), mode="area") > 0.5).float()[0]


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
    with autocast(x.device):
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
