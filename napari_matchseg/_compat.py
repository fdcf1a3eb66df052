"""Work-arounds for third-party clashes, each with the reason it exists."""

from __future__ import annotations

import sys


def _llvm_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return "libLLVM" in f.read()
    except OSError:  # not Linux: the clash below has only been seen with Mesa on Linux
        return False


def avoid_triton_llvm_clash() -> None:
    """Keep ``triton`` from loading into a process where Mesa's LLVM is already loaded.

    CUDA builds of torch import ``triton`` (via ``torch._dynamo``, e.g. from ``torchvision.ops``), and
    triton's bundled LLVM segfaults the process when Mesa's software OpenGL (llvmpipe, what napari
    uses under Xvfb and on many remote desktops) has loaded its own LLVM first. We never use
    ``torch.compile``, so marking triton unavailable costs nothing; on a process that imports torch
    before any OpenGL context, nothing is changed. Call before importing torchvision/open_clip/sam2.
    """
    if "triton" in sys.modules or "torch._dynamo" in sys.modules:
        return
    if _llvm_loaded():
        sys.modules["triton"] = None  # `import triton` now raises ImportError: torch treats it as absent
