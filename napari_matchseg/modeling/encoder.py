"""The Siamese encoder: the same weights embed the query and every support image."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBlock


class Encoder(nn.Module):
    """Residual CNN; returns features at 1/2, 1/4, 1/8 and 1/16 of the input size."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (24, 48, 96, 160)):
        super().__init__()
        self.widths = widths
        stages, cin = [], in_channels
        for w in widths:
            stages.append(ConvBlock(cin, w, stride=2))
            cin = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats
