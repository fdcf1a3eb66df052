"""A light U-Net-style decoder with skips from the query encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBlock


class Decoder(nn.Module):
    """From 1/16 up to full size; ``extra[i]`` channels (mask priors) join the skip at each scale."""

    def __init__(self, widths: tuple[int, ...], extra: tuple[int, ...], out_width: int = 16):
        super().__init__()
        # widths = encoder widths (1/2 .. 1/16); extra = prior channels per scale (same order)
        rev_w, rev_e = list(reversed(widths)), list(reversed(extra))
        self.head = ConvBlock(rev_w[0] + rev_e[0], rev_w[0])
        ups, cin = [], rev_w[0]
        for w, e in zip(rev_w[1:], rev_e[1:]):
            ups.append(ConvBlock(cin + w + e, w))
            cin = w
        self.ups = nn.ModuleList(ups)
        self.final = nn.Sequential(nn.Conv2d(cin, out_width, 3, padding=1), nn.GELU(), nn.Conv2d(out_width, 1, 1))

    def forward(self, skips: list[torch.Tensor], priors: list[torch.Tensor | None], size) -> torch.Tensor:
        def cat(x, p):
            return x if p is None else torch.cat([x, p], 1)

        rs, rp = list(reversed(skips)), list(reversed(priors))
        x = self.head(cat(rs[0], rp[0]))
        for block, skip, prior in zip(self.ups, rs[1:], rp[1:]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(cat(torch.cat([x, skip], 1), prior))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.final(x)
