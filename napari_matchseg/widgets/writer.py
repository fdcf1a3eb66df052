"""npe2 writer: a Labels layer to mask files (File > Save Selected Layer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..image_io import write_mask


def write_labels(path: str, data, meta: dict) -> list[str]:
    """2D labels -> one PNG (0/255); a stack -> ``<stem>_<index>.png`` per slice. Never overwrites."""
    arr = np.asarray(data)
    out = Path(path)
    if out.suffix.lower() != ".png":
        out = out.with_suffix(".png")
    if arr.ndim == 2:
        return [str(write_mask(out, arr != 0, overwrite=False))]
    if arr.ndim == 3:
        return [str(write_mask(out.with_name(f"{out.stem}_{i:04d}.png"), arr[i] != 0, overwrite=False))
                for i in range(arr.shape[0])]
    raise ValueError(f"cannot write labels of shape {arr.shape} as mask files: expected 2D or a stack of 2D")
