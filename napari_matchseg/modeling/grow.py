"""Turn a support-free MatchSeg (a plain U-Net, ``interaction="none"``) into one that reads supports.

Why: on one fixed task the support-free network learns far more per CPU minute than MatchSeg
(docs/benchmarks.md), so MatchSeg can start from it instead of from scratch. Every weight the two share is
copied; the new paths start at zero, as ControlNet's zero convolutions do: the interaction's projection back
to C channels and the decoder weights that read the mask priors. The one block that cannot be copied exactly
is the decoder head, whose input gains prior channels and so gains a normalised 1x1 shortcut where the U-Net
had an identity; that shortcut starts as the identity on the feature channels (before its normalisation).
"""

from __future__ import annotations

import dataclasses

import torch

from .matchseg import MatchSeg


@torch.no_grad()
def add_interaction(plain: MatchSeg, interaction: str = "joint_attention") -> MatchSeg:
    """A new MatchSeg with ``interaction`` whose shared weights are ``plain``'s; ``plain`` is unchanged."""
    if plain.uses_supports:
        raise ValueError(f"the model already has an interaction ({plain.config.interaction!r})")
    if interaction == "none":
        raise ValueError("choose the interaction to add (joint_attention or crossconv)")
    grown = MatchSeg(dataclasses.replace(plain.config, interaction=interaction))
    source, state = plain.state_dict(), grown.state_dict()
    for name, tensor in state.items():
        if name.startswith("interactions."):
            continue
        old = source.get(name)
        if old is not None and old.shape == tensor.shape:
            tensor.copy_(old)
        elif old is not None:  # a decoder conv whose input gained prior channels (appended last): read as zero
            tensor.zero_()
            tensor[:, : old.shape[1]].copy_(old)
        elif name.endswith("skip.0.weight"):  # the head's new shortcut: identity on the feature channels
            tensor.zero_()
            tensor[:, : tensor.shape[0], 0, 0].copy_(torch.eye(tensor.shape[0]))
    grown.load_state_dict(state)
    for block in grown.interactions:
        block.back.weight.zero_()
        block.back.bias.zero_()
    return grown.train(plain.training)
