"""A small memory-attention head on LiteMedSAM's frozen embeddings (issue 36, stage 3).

The query's cells attend over the references' cells, as SAM 2's memory attention does over its memories: keys
come from the references' features (what a cell looks like), values carry their features *and* their mask (what
the cell is). Two cheap priors, the query's cosine similarity to the references' mean foreground and background
features, join the attention's output at full grid resolution, and two convolutions give a foreground logit per
cell of the 64 x 64 grid. The head only reads embeddings that are cached anyway; it never touches pixels.

Shapes: query ``(B, 256, 64, 64)`` with ``query_valid`` ``(B, 1, 64, 64)`` (1 where the image is, 0 on padding);
references ``(B, K, 256, 64, 64)`` with ``ref_fraction`` (foreground fraction per cell) and ``ref_valid``, both
``(B, K, 1, 64, 64)``. Any K >= 1 works (attention over however many cells there are).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = 256  # LiteMedSAM's embedding channels
PRIORS = 3  # training-free maps the decoder sees: foreground and background prototype similarity, label transfer
TRANSFER_TEMPERATURE = 0.05  # of the label transfer's softmax over cosine similarities


class MemoryAttention(nn.Module):
    """Pre-norm cross-attention from query tokens to memory tokens, then an MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_q, self.norm_m, self.norm_out = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads

        def split(t):
            return t.view(b, -1, h, d // h).transpose(1, 2)

        q = split(self.q(self.norm_q(x)))
        k, v = split(self.k(self.norm_m(keys))), split(self.v(values))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = x + self.out(att.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm_out(x))


class ContextHead(nn.Module):
    def __init__(self, dim: int = 96, layers: int = 2, heads: int = 4, fine: int = 16, memory_pool: int = 4,
                 width: int = 32, residual: bool = False):
        """``memory_pool``: the references' cells are average-pooled by this factor per side before attention
        (4: 16 x 16 memory tokens per reference; the mask fraction keeps what the pooled cells hold).
        ``residual``: the output starts as the training-free priors' own logit (prototype contrast and label
        transfer, learnable scales) and the network learns a correction on top (its last layer starts at 0)."""
        super().__init__()
        self.config = {"dim": dim, "layers": layers, "heads": heads, "fine": fine, "memory_pool": memory_pool,
                       "width": width, **({"residual": True} if residual else {})}
        self.residual = residual
        self.memory_pool = memory_pool
        self.norm = nn.LayerNorm(CHANNELS)
        self.embed = nn.Linear(CHANNELS, dim)  # query and memory features share it: keys compare like with like
        self.label = nn.Embedding(2, dim)  # background, foreground: added to the memory's values by fraction
        self.layers = nn.ModuleList(MemoryAttention(dim, heads) for _ in range(layers))
        self.fine = nn.Linear(CHANNELS, fine)
        self.decode = nn.Sequential(nn.Conv2d(dim + fine + PRIORS, width, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, 1, 1))
        if residual:
            self.prior_weights = nn.Parameter(torch.tensor([10.0, 4.0, 0.0]))  # contrast, transfer, bias
            nn.init.zeros_(self.decode[-1].weight)
            nn.init.zeros_(self.decode[-1].bias)

    def _tokens(self, grid: torch.Tensor) -> torch.Tensor:
        """(N, 256, h, w) -> (N, h * w, 256), layer-normalised per cell."""
        return self.norm(grid.flatten(2).transpose(1, 2))

    def pool_references(self, refs: torch.Tensor, ref_fraction: torch.Tensor, ref_valid: torch.Tensor):
        """The references as the memory sees them (:func:`pool_references`). Training pools once per image, ahead."""
        return pool_references(refs, ref_fraction, ref_valid, self.memory_pool)

    def forward(self, query: torch.Tensor, query_valid: torch.Tensor, refs: torch.Tensor,
                ref_fraction: torch.Tensor, ref_valid: torch.Tensor) -> torch.Tensor:
        """Foreground logits ``(B, 1, 64, 64)`` of the query's cells (padding cells get a very low logit). The
        references may come at full grid size or already pooled (:meth:`pool_references`)."""
        b = refs.shape[0]
        g = query.shape[-1]
        if refs.shape[-1] == g:
            refs, ref_fraction, ref_valid = self.pool_references(refs, ref_fraction, ref_valid)
        query = query.float()
        coarse = F.avg_pool2d(query, 2)  # attention runs on a 32 x 32 query grid; the fine path keeps 64 x 64
        mask = ref_valid.flatten(1).reshape(b, -1) > 0.5
        transfer = _label_transfer(coarse, refs, ref_fraction, mask)  # (B, 1, 32, 32)
        priors = torch.cat([_prototype_priors(query, refs, ref_fraction, ref_valid),
                            F.interpolate(transfer, size=(g, g), mode="bilinear", align_corners=False)], 1)
        q_tokens = self.embed(self._tokens(coarse))  # (B, 1024, dim)
        m_tokens = self.embed(self._tokens(refs.flatten(0, 1))).view(b, -1, q_tokens.shape[-1])  # (B, K*n, dim)
        frac_t = ref_fraction.flatten(1).reshape(b, -1, 1)
        values = m_tokens + frac_t * self.label.weight[1] + (1 - frac_t) * self.label.weight[0]
        x = q_tokens
        for layer in self.layers:
            x = layer(x, m_tokens, values, mask)
        half = g // 2
        x = x.transpose(1, 2).reshape(b, -1, half, half)
        x = F.interpolate(x, size=(g, g), mode="bilinear", align_corners=False)
        fine = self.fine(self._tokens(query)).transpose(1, 2).reshape(b, -1, g, g)
        logits = self.decode(torch.cat([x, fine, priors], 1))
        if self.residual:
            w = self.prior_weights
            logits = logits + w[0] * (priors[:, :1] - priors[:, 1:2]) + w[1] * (priors[:, 2:] - 0.5) + w[2]
        return torch.where(query_valid > 0.5, logits, torch.full_like(logits, -20.0))


def pool_references(refs: torch.Tensor, ref_fraction: torch.Tensor, ref_valid: torch.Tensor, pool: int):
    """(B, K, C, 64 / pool, 64 / pool) means of the references' cells (float32; valid where most cells are)."""
    b, k = refs.shape[:2]

    def mean(t):
        return F.avg_pool2d(t.flatten(0, 1).float(), pool).unflatten(0, (b, k))

    return mean(refs), mean(ref_fraction), (mean(ref_valid) > 0.5).float()


def _label_transfer(coarse: torch.Tensor, refs: torch.Tensor, ref_fraction: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """Each query cell's foreground fraction as the mean of the references' cells it resembles (softmax of cosine
    similarity): the references' masks carried over by appearance alone, whatever the kind of image."""
    b, c, h, w = coarse.shape
    q = F.normalize(coarse.flatten(2).transpose(1, 2), dim=2)  # (B, hw, C)
    m = F.normalize(refs.transpose(2, 1).flatten(2).transpose(1, 2), dim=2)  # (B, K*n, C): channels last
    frac = ref_fraction.flatten(1)[:, :, None]  # (B, K*n, 1)
    with torch.no_grad():
        att = F.scaled_dot_product_attention(q[:, None], m[:, None], frac[:, None], attn_mask=mask[:, None, None, :],
                                             scale=1.0 / TRANSFER_TEMPERATURE)
    return att[:, 0].transpose(1, 2).reshape(b, 1, h, w)


def _prototype_priors(query, refs, ref_fraction, ref_valid) -> torch.Tensor:
    """Cosine similarity of each query cell to the references' mean foreground and mean background feature."""
    feats = F.normalize(refs, dim=2)  # (B, K, 256, h, w)
    fg_w = ref_fraction * ref_valid
    bg_w = (1 - ref_fraction) * ref_valid
    fg = (feats * fg_w).sum((1, 3, 4)) / fg_w.sum((1, 3, 4)).clamp_min(1e-6)  # (B, 256)
    bg = (feats * bg_w).sum((1, 3, 4)) / bg_w.sum((1, 3, 4)).clamp_min(1e-6)
    q = F.normalize(query, dim=1)
    protos = F.normalize(torch.stack([fg, bg], 1), dim=2)  # (B, 2, 256)
    return torch.einsum("bchw,bpc->bphw", q, protos)


__all__ = ["ContextHead", "pool_references"]
