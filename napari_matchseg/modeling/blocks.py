"""Small convolutional building blocks shared by the encoder and decoder."""

from __future__ import annotations

import torch
from torch import nn


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm: independent of batch size and of how many supports share a batch."""
    return nn.GroupNorm(min(8, channels // 4) or 1, channels)


class ConvBlock(nn.Module):
    """Two 3x3 conv + norm + GELU, with a residual path; optionally strided (downsampling) first."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = norm(cout)
        self.act = nn.GELU()
        self.skip = None if (cin == cout and stride == 1) else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.n1(self.conv1(x)))
        y = self.n2(self.conv2(y))
        return self.act(y + (x if self.skip is None else self.skip(x)))
