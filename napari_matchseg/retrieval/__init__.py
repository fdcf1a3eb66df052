"""Similarity retrieval of labelled references: one interface, three retrievers.

>>> from napari_matchseg.retrieval import get_retriever, retrieve
>>> matches = retrieve(bank, get_retriever("handcrafted"), image, k=8)
"""

from __future__ import annotations

from .base import Retriever, l2_normalize, top_k
from .search import Match, retrieve

RETRIEVER_NAMES = ("handcrafted", "clip", "dinov2")
DEFAULT_RETRIEVER = "handcrafted"
_instances: dict[tuple, Retriever] = {}


def get_retriever(name: str = DEFAULT_RETRIEVER, **options) -> Retriever:
    """A retriever by name, built once per (name, options) so a model loads once per process."""
    key = (name, tuple(sorted((k, str(v)) for k, v in options.items())))
    if key in _instances:
        return _instances[key]
    if name == "handcrafted":
        from .handcrafted import HandcraftedRetriever as cls
    elif name == "clip":
        from .clip import ClipRetriever as cls
    elif name == "dinov2":
        from .dinov2 import Dinov2Retriever as cls
    else:
        from ..errors import InputError

        raise InputError(f"unknown retriever {name!r}; choose one of {', '.join(RETRIEVER_NAMES)}")
    inst = cls(**options)
    _instances[key] = inst
    return inst


__all__ = ["Retriever", "Match", "retrieve", "top_k", "l2_normalize", "get_retriever",
           "RETRIEVER_NAMES", "DEFAULT_RETRIEVER"]
