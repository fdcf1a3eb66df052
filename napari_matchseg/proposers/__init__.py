"""Proposers: a foreground probability map for a new image from its retrieved references.

>>> from napari_matchseg.proposers import PROPOSERS
>>> proposer = PROPOSERS.get("matchseg").build({"checkpoint": None}, device="auto")

Add one with a module holding a :class:`~napari_matchseg.proposers.base.Proposer` subclass and one
``PROPOSERS.register(Entry(...))`` line (docs/adding-a-model.md): the CLI's ``--proposer`` choices and options,
the plugin's proposer list and ``matchseg weights`` read this table.
"""

from __future__ import annotations

from ..registry import Entry, Option, Registry
from ..sam2_options import SAM2_IMAGE_SIZE, SAM2_MODEL, SAM2_WEIGHTS

CHECKPOINT = Option("--checkpoint", "checkpoint", None, "the proposer's checkpoint (default: MatchSeg's shipped one; "
                    "for sam2 the weights cache, see `matchseg weights where`)")

PROPOSERS = Registry("proposer")
PROPOSERS.register(Entry(
    "matchseg", "napari_matchseg.proposers.matchseg:MatchSegPredictor",
    "MatchSeg network: joint attention between the query and its references (shipped checkpoint)", title="MatchSeg",
    options=(CHECKPOINT, Option("--mirror-tta", "mirror_tta", False,
                                "matchseg: average each image's probabilities with its mirror image's "
                                "(62 -> 96 ms per proposal on a 2-core CPU)", type=bool))))
PROPOSERS.register(Entry(
    "sam2", "napari_matchseg.proposers.sam2_memory:Sam2MemoryProposer",
    "SAM 2 memory attention: retrieved pairs become memories, the image is the next frame", title="SAM 2",
    options=(CHECKPOINT, SAM2_MODEL, SAM2_IMAGE_SIZE), weights=SAM2_WEIGHTS, shares_model="sam2"))

PROPOSERS.register(Entry(
    "litemedsam", "napari_matchseg.proposers.litemedsam:LiteMedSamProposer",
    "LiteMedSAM (pretrained medical SAM) from a user's boxes and points alone (--prompts); needs no references",
    weights=("litemedsam",), shares_model="litemedsam", title="LiteMedSAM"))

PROPOSERS.register(Entry(
    "context", "napari_matchseg.proposers.context:ContextProposer",
    "in-context on LiteMedSAM's pretrained encoder (no training): the references' features map the query, "
    "LiteMedSAM's decoder draws each part; takes clicks and boxes, works with no references (-k 0)",
    weights=("litemedsam",), shares_model="litemedsam", title="in-context (LiteMedSAM)", retriever="medsam",
    options=(Option("--context-method", "method", "mean", "context: how the references score the query's "
                    "cells: prototypes, a linear probe, the mean of both, or a trained head (--context-head)",
                    choices=("prototype", "probe", "mean", "head")),
             Option("--context-head", "head", None, "context: the trained head's weights for --context-method "
                    "head (benchmarks/train_context_head.py)"),
             Option("--context-decoder", "decoder", "box", "context: 'box' has LiteMedSAM's decoder draw each "
                    "part of the map from its box, 'box+mask' adds the map as its mask input, 'none' keeps the map",
                    choices=("none", "box", "box+mask")),
             Option("--context-objects", "objects", "references", "context: 'references' keeps as many parts "
                    "of the map as the references show objects (and any nearly as strong), 'all' keeps every part",
                    choices=("references", "all")))))

DEFAULT_PROPOSER = "matchseg"


def suggested_retriever(proposer: str) -> str:
    """The retriever a proposer works best with when the user names none: the context proposer's is LiteMedSAM's
    own embedding (``medsam``: the image is encoded for the proposal anyway, so retrieval costs nothing more, and
    it finds better references for it, docs/context.md); the others' the default."""
    from ..retrieval import DEFAULT_RETRIEVER

    entry = PROPOSERS.get(proposer) if proposer in PROPOSERS else None
    return entry.retriever if entry is not None and entry.retriever else DEFAULT_RETRIEVER


__all__ = ["PROPOSERS", "DEFAULT_PROPOSER", "CHECKPOINT", "suggested_retriever"]
