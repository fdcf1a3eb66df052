"""Pick the compute device: CUDA, then Apple MPS, then CPU; and whether fp16 is safe there."""

from __future__ import annotations

import os

import torch

from .errors import MatchsegError


def best_device() -> torch.device:
    """The fastest device available (override with ``MATCHSEG_DEVICE=cpu|cuda|cuda:1|mps``)."""
    forced = os.environ.get("MATCHSEG_DEVICE")
    if forced:
        return resolve_device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"`` means :func:`best_device`; anything else is checked to exist."""
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        return best_device()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MatchsegError(f"device {device!r} was requested but CUDA is not available here; "
                            "use device='auto' or 'cpu'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MatchsegError(f"device {device!r} was requested but Apple MPS is not available here; "
                            "use device='auto' or 'cpu'")
    return dev


def half_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision to autocast to on ``device``, or None where fp32 should be kept.

    bf16 on CUDA when the GPU supports it (no overflow risk), else fp16 on CUDA/MPS; CPU keeps fp32
    (CPU half-precision kernels are slower than fp32 on most machines).
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None
