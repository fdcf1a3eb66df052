"""MatchSeg: a Siamese encoder, Joint Attention at coarse scales, and a light decoder.

The support images go through the same encoder as the query, but only their coarse features (1/8 and
1/16 of the working size) are used, and they do not depend on the query: :meth:`MatchSeg.encode_supports`
computes them once per reference so that a proposal costs one encoder pass, the attention and one
decoder pass (see docs/matchseg.md for the design and its FLOPs).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import Decoder
from .encoder import Encoder
from .joint_attention import CrossConvInteraction, JointAttention

INTERACTIONS = ("joint_attention", "crossconv", "none")


@dataclasses.dataclass(frozen=True)
class MatchSegConfig:
    image_size: int = 128  # the working size; images are resized to it and logits resized back
    in_channels: int = 3  # RGB in [0, 1]; grayscale is replicated (image_io.to_float_rgb)
    widths: tuple[int, ...] = (24, 48, 96, 160)  # encoder stages at 1/2, 1/4, 1/8, 1/16
    attention_stages: tuple[int, ...] = (2, 3)  # which stages interact with the supports
    reduced: tuple[int, ...] = (64, 96)  # C' per interacting stage
    heads: int = 4
    interaction: str = "joint_attention"  # or "crossconv" (ablation), "none" (plain U-Net)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MatchSegConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MatchSeg config keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class SupportFeatures(NamedTuple):
    """Coarse support features and masks per interacting stage: (B, k, C, h, w) and (B, k, 1, h, w)."""

    feats: list[torch.Tensor]
    masks: list[torch.Tensor]

    def select(self, index) -> SupportFeatures:
        """Keep some supports (``index`` over the k axis)."""
        return SupportFeatures([f[:, index] for f in self.feats], [m[:, index] for m in self.masks])

    @staticmethod
    def cat(parts: list[SupportFeatures]) -> SupportFeatures:
        """Join supports encoded separately (along k)."""
        n = len(parts[0].feats)
        return SupportFeatures([torch.cat([p.feats[i] for p in parts], 1) for i in range(n)],
                               [torch.cat([p.masks[i] for p in parts], 1) for i in range(n)])


class MatchSeg(nn.Module):
    def __init__(self, config: MatchSegConfig = MatchSegConfig()):
        super().__init__()
        if config.interaction not in INTERACTIONS:
            raise ValueError(f"interaction must be one of {INTERACTIONS}, not {config.interaction!r}")
        if len(config.reduced) != len(config.attention_stages):
            raise ValueError("config.reduced needs one C' per attention stage")
        self.config = config
        self.encoder = Encoder(config.in_channels, config.widths)
        interaction = {"joint_attention": JointAttention, "crossconv": CrossConvInteraction}.get(config.interaction)
        self.interactions = nn.ModuleList(
            [interaction(config.widths[s], r, config.heads) for s, r in zip(config.attention_stages, config.reduced)]
            if interaction else [])
        extra = [0] * len(config.widths)
        for s, block in zip(config.attention_stages, self.interactions):
            extra[s] = block.prior_channels
        self.decoder = Decoder(config.widths, tuple(extra))

    @property
    def uses_supports(self) -> bool:
        return self.config.interaction != "none"

    def encode_supports(self, images: torch.Tensor, masks: torch.Tensor) -> SupportFeatures:
        """images (B, k, 3, S, S), masks (B, k, 1, S, S) in [0, 1] at the working size S."""
        b, k = images.shape[:2]
        feats = self.encoder(images.flatten(0, 1))
        out_f, out_m = [], []
        for s in self.config.attention_stages:
            f = feats[s]
            out_f.append(f.view(b, k, *f.shape[1:]))
            m = F.adaptive_avg_pool2d(masks.flatten(0, 1).to(f.dtype), f.shape[-2:])  # fraction of foreground
            out_m.append(m.view(b, k, 1, *f.shape[-2:]))
        return SupportFeatures(out_f, out_m)

    def decode(self, query: torch.Tensor, supports: SupportFeatures | None) -> torch.Tensor:
        """Logits (B, 1, S, S) for queries (B, 3, S, S) given encoded supports."""
        feats = self.encoder(query)
        priors: list[torch.Tensor | None] = [None] * len(feats)
        if self.uses_supports:
            if supports is None:
                raise ValueError("this MatchSeg model needs support images and masks")
            for i, (s, block) in enumerate(zip(self.config.attention_stages, self.interactions)):
                feats[s], priors[s] = block(feats[s], supports.feats[i], supports.masks[i])
        return self.decoder(feats, priors, query.shape[-2:])

    def forward(self, query: torch.Tensor, support_images: torch.Tensor | None = None,
                support_masks: torch.Tensor | None = None) -> torch.Tensor:
        supports = None
        if self.uses_supports:
            if support_images is None or support_masks is None:
                raise ValueError("this MatchSeg model needs support images and masks")
            supports = self.encode_supports(support_images, support_masks)
        return self.decode(query, supports)
