"""Similarity retrieval of labelled references: one interface, a registry of retrievers.

>>> from napari_matchseg.retrieval import get_retriever, retrieve
>>> matches = retrieve(bank, get_retriever("handcrafted"), image, k=8)
"""

from __future__ import annotations

from ..registry import Entry, Option, Registry
from .base import Retriever, l2_normalize, top_k
from .search import Match, retrieve

RETRIEVERS = Registry("retriever")
RETRIEVERS.register(Entry("handcrafted", "napari_matchseg.retrieval.handcrafted:HandcraftedRetriever",
                          "HOG + LBP + intensity and colour histograms; needs no download", takes_device=False,
                          title="handcrafted"))
RETRIEVERS.register(Entry(
    "clip", "napari_matchseg.retrieval.clip:ClipRetriever", "open_clip image tower", title="CLIP",
    options=(Option("--clip-model", "model_name", "ViT-B-32", "open_clip architecture"),
             Option("--clip-pretrained", "pretrained", "laion2b_s34b_b79k",
                    "open_clip pretrained tag (downloaded on first use unless --clip-checkpoint)"),
             Option("--clip-checkpoint", "checkpoint", None, "local open_clip weights file (nothing is downloaded)"),
             Option("--clip-config", "model_config", None, "JSON model config for a custom open_clip architecture")),
    weights=("clip-vit-b-32-laion2b", "clip-vit-b-16-laion2b")))
_DINOV2 = ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14")
RETRIEVERS.register(Entry(
    "dinov2", "napari_matchseg.retrieval.dinov2:Dinov2Retriever", "DINOv2 backbone through torch.hub", title="DINOv2",
    options=(Option("--dinov2-arch", "arch", "dinov2_vits14", "DINOv2 backbone from torch.hub", choices=_DINOV2),
             Option("--dinov2-hub-dir", "hub_dir", None, "local copy of github.com/facebookresearch/dinov2"),
             Option("--dinov2-checkpoint", "checkpoint", None, "local DINOv2 weights file (nothing is downloaded)")),
    weights=_DINOV2))

RETRIEVERS.register(Entry(
    "medsam", "napari_matchseg.retrieval.medsam:MedSamRetriever",
    "LiteMedSAM's pretrained medical image encoder (installed with the package), pooled", title="LiteMedSAM",
    options=(Option("--medsam-pooling", "pooling", "meanstd", "how the 256 x 64 x 64 embedding becomes a vector",
                    choices=("mean", "meanstd", "gem")),),
    weights=("litemedsam",), shares_model="litemedsam"))

DEFAULT_RETRIEVER = "handcrafted"
_instances: dict[tuple, Retriever] = {}


def get_retriever(name: str = DEFAULT_RETRIEVER, **options) -> Retriever:
    """A retriever by name, built once per (name, options) so a model loads once per process."""
    key = (name, tuple(sorted((k, str(v)) for k, v in options.items())))
    if key not in _instances:
        _instances[key] = RETRIEVERS.get(name).load()(**options)
    return _instances[key]


__all__ = ["Retriever", "Match", "retrieve", "top_k", "l2_normalize", "get_retriever", "RETRIEVERS",
           "DEFAULT_RETRIEVER"]
