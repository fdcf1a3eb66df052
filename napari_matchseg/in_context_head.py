"""The learned counterpart of :mod:`napari_matchseg.in_context`: a trained memory-attention head turns the
references' cached embeddings and masks into the query's foreground map (``--context-method head``).

The head (:mod:`napari_matchseg.modeling.context_head`) is small (a few hundred thousand weights) and reads only
LiteMedSAM embeddings, so a map costs milliseconds once the embeddings are cached. Weights are float16 safetensors
with the head's configuration in their metadata; nothing is unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import WeightsError
from .in_context import GRID, ContextMap, mask_to_cells, valid_cells
from .modeling.context_head import ContextHead
from .modeling.heads import build_context_head
from .weights import unreadable


def load_context_head(path: str | Path) -> ContextHead:
    """The head saved at ``path`` (by ``training.context_head.save_head``); a clear error when it is not one."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"context head weights not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            config = json.loads((f.metadata() or {}).get("config", "null"))
        state = load_file(str(path))
        if not isinstance(config, dict):
            raise ValueError("no head configuration in the file's metadata")
        return build_context_head(state, **config)
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        raise unreadable(path, "context head weights", exc) from exc


class Memory:
    """One reference as the head's memory: its pooled features, mask fraction and valid cells (1, 1, C, h, w)."""

    def __init__(self, head: ContextHead, features: torch.Tensor, scaled: tuple[int, int], mask: np.ndarray):
        rows, cols = valid_cells(scaled)
        frac, valid = torch.zeros(1, 1, 1, GRID, GRID), torch.zeros(1, 1, 1, GRID, GRID)
        frac[0, 0, 0, :rows, :cols] = mask_to_cells(mask, scaled)
        valid[0, 0, 0, :rows, :cols] = 1
        self.tensors = head.pool_references(features.float().reshape(1, 1, *features.shape[-3:]), frac, valid)


@torch.no_grad()
def head_map(head: ContextHead, features: torch.Tensor, scaled: tuple[int, int],
             memories: Sequence[Memory]) -> ContextMap:
    """The head's foreground probability on every valid cell of the query's (1, 256, 64, 64) embedding."""
    rows, cols = valid_cells(scaled)
    valid = torch.zeros(1, 1, GRID, GRID)
    valid[..., :rows, :cols] = 1
    refs, frac, ref_valid = (torch.cat(col, 1) for col in zip(*(m.tensors for m in memories)))
    logits = head(features.float(), valid, refs, frac, ref_valid)
    prob = torch.sigmoid(logits[0, 0]) * valid[0, 0]
    return ContextMap(prob, (rows, cols))


__all__ = ["load_context_head", "Memory", "head_map"]
