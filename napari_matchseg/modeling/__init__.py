"""The MatchSeg network (pure torch, no I/O): encoder, joint attention, decoder, and the model that joins them."""

from .grow import add_interaction
from .matchseg import MatchSeg, MatchSegConfig, SupportFeatures

__all__ = ["MatchSeg", "MatchSegConfig", "SupportFeatures", "add_interaction"]
