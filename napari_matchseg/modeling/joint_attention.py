"""Joint Attention between query and support features (MatchSeg, Huo et al.), designed from the paper.

At one scale, with query features Q (B, C, h, w), support features S (B, k, C, h, w) and support masks
M (B, k, 1, h, w) resized to that scale:

1. project both to C' channels (C' < C, for cost);
2. support -> query: every support position attends over the query positions, so the supports are read
   in the context of this query (residual);
3. query -> support: every query position attends over all k * h * w support positions (softmax over
   them). The values carry the support features *and* the support mask, so the attention both transfers
   features and aggregates labels (a mask prior per head, as in DCAMA);
4. residual connection back to C channels.

The cost is linear in k: the attention matrices are (h w) x (k h w).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, extra_values: torch.Tensor | None = None):
        """x (B, N, D) attends over ctx (B, M, D). ``extra_values`` (B, M, E) are aggregated with the same
        weights per head and returned as (B, N, heads * E)."""
        b, n, _ = x.shape
        m = ctx.shape[1]
        q = self.q(x).view(b, n, self.heads, self.dh).transpose(1, 2)
        k = self.k(ctx).view(b, m, self.heads, self.dh).transpose(1, 2)
        v = self.v(ctx).view(b, m, self.heads, self.dh)
        if extra_values is not None:
            e = extra_values.shape[-1]
            v = torch.cat([v, extra_values[:, :, None, :].expand(b, m, self.heads, e)], -1)
        v = v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # softmax over the context positions
        feat = y[..., : self.dh].transpose(1, 2).reshape(b, n, self.heads * self.dh)
        extra = y[..., self.dh:].transpose(1, 2).reshape(b, n, -1) if extra_values is not None else None
        return self.out(feat), extra


class JointAttention(nn.Module):
    """Query/support interaction at one scale; returns refined query features and mask priors."""

    def __init__(self, channels: int, reduced: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.proj_q = nn.Conv2d(channels, reduced, 1)
        self.proj_s = nn.Conv2d(channels + 1, reduced, 1)  # the support mask enters its features too
        self.norm_q = nn.LayerNorm(reduced)
        self.norm_s = nn.LayerNorm(reduced)
        self.s_from_q = _CrossAttention(reduced, heads)
        self.q_from_s = _CrossAttention(reduced, heads)
        self.norm_out = nn.LayerNorm(reduced)
        self.back = nn.Conv2d(reduced, channels, 1)
        self.prior_channels = 2 * heads  # foreground and background aggregation per head

    def forward(self, q: torch.Tensor, s: torch.Tensor, m: torch.Tensor):
        """q (B, C, h, w), s (B, k, C, h, w), m (B, k, 1, h, w) in [0, 1] ->
        (refined q (B, C, h, w), priors (B, 2 heads, h, w))."""
        b, k, c, h, w = s.shape
        qt = self.norm_q(self.proj_q(q).flatten(2).transpose(1, 2))  # (B, hw, C')
        st = self.proj_s(torch.cat([s, m], 2).flatten(0, 1))  # (B k, C', h, w)
        st = self.norm_s(st.view(b, k, -1, h * w).transpose(2, 3).reshape(b, k * h * w, -1))  # (B, k hw, C')
        st = st + self.s_from_q(st, qt)[0]
        labels = m.view(b, k, 1, h * w).transpose(2, 3).reshape(b, k * h * w, 1)
        feat, prior = self.q_from_s(qt, st, torch.cat([labels, 1 - labels], -1))
        qt = self.norm_out(qt + feat)
        refined = q + self.back(qt.transpose(1, 2).reshape(b, -1, h, w))
        priors = prior.transpose(1, 2).reshape(b, self.prior_channels, h, w)
        return refined, priors


class CrossConvInteraction(nn.Module):
    """The ablation without Joint Attention (UniverSeg-style): convolve each (query, support, mask)
    pair and average over the supports. Same inputs and outputs as :class:`JointAttention`."""

    def __init__(self, channels: int, reduced: int, heads: int = 4):
        super().__init__()
        self.prior_channels = 2 * heads
        self.pair = nn.Sequential(nn.Conv2d(2 * channels + 1, reduced, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(reduced, reduced + self.prior_channels, 3, padding=1))
        self.back = nn.Conv2d(reduced, channels, 1)
        self.reduced = reduced

    def forward(self, q, s, m):
        b, k, c, h, w = s.shape
        pairs = torch.cat([q[:, None].expand(b, k, c, h, w), s, m], 2).flatten(0, 1)
        y = self.pair(pairs).view(b, k, -1, h, w).mean(1)
        return q + self.back(y[:, : self.reduced]), y[:, self.reduced:]
