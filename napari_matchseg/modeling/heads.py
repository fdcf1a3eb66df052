"""The in-context heads by kind (as segment-anything's ``build_sam``): a saved head's config names what to build."""

from __future__ import annotations

import torch
from torch import nn

from .context_head import ContextHead
from .relational_head import RelationalHead


def build_context_head(state: dict[str, torch.Tensor] | None = None, **config) -> nn.Module:
    """A head with ``config`` (its defaults when empty; ``kind`` 'relational' picks :class:`RelationalHead`, else
    the attention :class:`ContextHead`), loaded from ``state`` when given."""
    head = RelationalHead(**config) if config.get("kind") == "relational" else ContextHead(**config)
    if state is not None:
        head.load_state_dict({k: v.float() for k, v in state.items()})
    return head.eval()


__all__ = ["build_context_head"]
