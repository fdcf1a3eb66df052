"""A head that sees only how the query resembles its references, never what the query looks like (issue 36).

The memory-attention head (:mod:`.context_head`) reads the query's own features, so it can learn what the training
datasets' objects look like and stop reading the references: on kinds of image it never saw, it collapses. This
head cannot: its input is a stack of training-free *relational* maps, each a function of the query's similarity to
the references' cells and of the references' masks (label transfer at two temperatures, nearest foreground minus
nearest background cell, mean-prototype contrast, a ridge probe fitted on the references in closed form, the
references' foreground share). A small convolutional network then learns how to weigh and clean those maps (where
they agree, object shapes, how thin structures look in them). Rotating every feature vector leaves its input
unchanged, so nothing it learns can be specific to a dataset's appearance.

Same call as :class:`.context_head.ContextHead`: ``head(query, query_valid, refs, ref_fraction, ref_valid)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..in_context import References, build_scorers
from .context_head import pool_references

TEMPERATURES = (0.02, 0.05)  # of the label transfer's softmax over cosine similarities
RIDGE = 1.0  # the closed-form probe's L2 weight, in units of the references' (unit-norm) cells
MAPS = len(TEMPERATURES) + 5  # transfers, nearest-cell contrast, prototype contrast, probe, share, valid
FITTED = 2  # with ``fitted``: the training-free proposer's own prototype and probe maps (in_context, "mean")


@torch.no_grad()
def relational_maps(query: torch.Tensor, query_valid: torch.Tensor, refs: torch.Tensor, ref_fraction: torch.Tensor,
                    ref_valid: torch.Tensor) -> torch.Tensor:
    """(B, MAPS, 64, 64): the training-free maps the network reads. ``refs`` already pooled (B, K, C, h, w).

    The maps that compare every query cell with every reference cell (label transfer, nearest cells) run on the
    query's 2 x 2 cell means and are brought back to the grid: they cost most. The linear ones (prototypes, probe)
    run on every cell."""
    b, _, g, _ = query.shape
    q = F.normalize(query.float().flatten(2).transpose(1, 2), dim=2)  # (B, g*g, C)
    m = F.normalize(refs.float().transpose(1, 2).flatten(2).transpose(1, 2), dim=2)  # (B, N, C)
    frac = ref_fraction.flatten(1)  # (B, N)
    valid = ref_valid.flatten(1) > 0.5
    w = valid.float()
    coarse = F.normalize(F.avg_pool2d(query.float(), 2).flatten(2).transpose(1, 2), dim=2)
    sim = coarse @ m.transpose(1, 2)  # (B, g*g / 4, N)
    masked = sim.masked_fill(~valid[:, None, :], -1e4)
    maps = [torch.softmax(masked / t, dim=2) @ frac[:, :, None] - 0.5 for t in TEMPERATURES]
    fg_cells = valid & (frac >= 0.5)
    fg_cells = torch.where(fg_cells.any(1, keepdim=True), fg_cells, valid & (frac > 0))
    bg_cells = valid & (frac < 0.5)
    nearest_fg = sim.masked_fill(~fg_cells[:, None, :], -1.0).amax(2)
    nearest_bg = sim.masked_fill(~bg_cells[:, None, :], -1.0).amax(2)
    maps.append(((nearest_fg - nearest_bg) * 5)[:, :, None])
    half = torch.cat(maps, 2).transpose(1, 2).reshape(b, -1, g // 2, g // 2)
    fine = [F.interpolate(half, size=(g, g), mode="bilinear", align_corners=False)]
    fg_mean = F.normalize((m * (frac * w)[:, :, None]).sum(1), dim=1)
    bg_mean = F.normalize((m * ((1 - frac) * w)[:, :, None]).sum(1), dim=1)
    fine.append(((q @ fg_mean[:, :, None]) - (q @ bg_mean[:, :, None])) * 5)
    fine.append(_ridge_probe(q, m, frac, w)[:, :, None])
    share = (frac * w).sum(1) / w.sum(1).clamp_min(1)
    fine.append(share[:, None, None].expand(b, g * g, 1))
    fine[1:] = [t.transpose(1, 2).reshape(b, 1, g, g) for t in fine[1:]]
    return torch.cat([torch.cat(fine, 1) * query_valid, query_valid], 1)


def _ridge_probe(q: torch.Tensor, m: torch.Tensor, frac: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A linear regression of the references' cell fractions on their features (with a bias), applied to the query."""
    x = torch.cat([m, torch.ones_like(m[..., :1])], 2) * w[:, :, None]  # (B, N, C + 1), invalid rows zero
    eye = torch.eye(x.shape[2], dtype=x.dtype)
    a = x.transpose(1, 2) @ x + RIDGE * eye
    rhs = x.transpose(1, 2) @ ((frac - 0.5) * w)[:, :, None]
    coef = torch.cholesky_solve(rhs, torch.linalg.cholesky(a))  # (B, C + 1, 1); a is positive definite
    return (q @ coef[:, :-1] + coef[:, -1:].transpose(1, 2))[..., 0] * 2


@torch.no_grad()
def fitted_maps(query: torch.Tensor, refs: torch.Tensor, ref_fraction: torch.Tensor,
                ref_valid: torch.Tensor) -> torch.Tensor:
    """(B, FITTED, 64, 64): the training-free proposer's prototype and probe probabilities (minus 0.5), fitted on
    each episode's full-resolution reference cells exactly as ``in_context.build_scorers(.., "mean")`` does."""
    b, _, g, _ = query.shape
    out = torch.zeros(b, FITTED, g, g)
    for i in range(b):
        keep = ref_valid[i, :, 0] > 0.5  # (K, g, g)
        cells = F.normalize(refs[i].float().permute(0, 2, 3, 1)[keep], dim=1)
        scorers = build_scorers(References(cells, ref_fraction[i, :, 0][keep].float()), "mean")
        q = F.normalize(query[i].float().flatten(1).T, dim=1)
        for j, scorer in enumerate(scorers):
            out[i, j] = scorer(q).view(g, g)
    return out - 0.5


class RelationalHead(nn.Module):
    def __init__(self, width: int = 32, memory_pool: int = 2, fitted: bool = False, residual: bool = False,
                 kind: str = "relational"):
        """``memory_pool``: the references' cells are averaged by this factor per side before the query is compared
        with them (2: 32 x 32 cells per reference; their mask fraction keeps what they hold). ``fitted``: the
        training-free proposer's own maps join the input (the references then come at full resolution).
        ``residual`` (with ``fitted``): the output starts as the training-free proposer's own logit and the network
        learns a correction (its last layer starts at 0), so what comes after the map sees what it was tuned on."""
        super().__init__()
        if residual and not fitted:
            raise ValueError("a residual relational head needs fitted=True (it corrects the fitted scorers' map)")
        self.config = {"kind": kind, "width": width, "memory_pool": memory_pool,
                       **({"fitted": True} if fitted else {}), **({"residual": True} if residual else {})}
        self.memory_pool = memory_pool
        self.fitted = fitted
        self.residual = residual
        self.input_pool = 1 if fitted else memory_pool  # how training hands it the references
        maps = MAPS + (FITTED if fitted else 0)

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GELU())

        self.local = nn.Sequential(block(maps, width), block(width, width))
        self.context = nn.Sequential(nn.AvgPool2d(4), block(width, width), block(width, width))
        self.out = nn.Sequential(block(2 * width, width), nn.Conv2d(width, 1, 1))
        if residual:
            nn.init.zeros_(self.out[-1].weight)
            nn.init.zeros_(self.out[-1].bias)

    def pool_references(self, refs, ref_fraction, ref_valid):
        """The references as the head takes them: pooled, or at full resolution when it fits the scorers itself."""
        if self.fitted:
            return refs.float(), ref_fraction.float(), (ref_valid > 0.5).float()
        return pool_references(refs, ref_fraction, ref_valid, self.memory_pool)

    @torch.no_grad()
    def maps(self, query: torch.Tensor, query_valid: torch.Tensor, refs: torch.Tensor, ref_fraction: torch.Tensor,
             ref_valid: torch.Tensor) -> torch.Tensor:
        """The network's input, (B, C, 64, 64): no weights are involved, so training can compute it once per
        episode and keep it (``training.map_cache``). The query's valid cells are channel ``MAPS - 1``."""
        full = refs.shape[-1] == query.shape[-1]
        extra = []
        if self.fitted:
            if not full:
                raise ValueError("a head with fitted maps takes the references at full resolution")
            extra = [fitted_maps(query, refs, ref_fraction, ref_valid) * query_valid]
        if full and self.memory_pool > 1:
            refs, ref_fraction, ref_valid = pool_references(refs, ref_fraction, ref_valid, self.memory_pool)
        return torch.cat([relational_maps(query, query_valid, refs, ref_fraction, ref_valid), *extra], 1)

    def decode(self, maps: torch.Tensor) -> torch.Tensor:
        """Foreground logits ``(B, 1, 64, 64)`` from :meth:`maps`; padding cells get a very low logit."""
        x = self.local(maps.float())
        ctx = F.interpolate(self.context(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.out(torch.cat([x, ctx], 1))
        if self.residual:  # the fitted scorers' mean probability ("mean"), as a logit
            prob = (maps[:, MAPS:MAPS + FITTED].float() + 0.5).mean(1, keepdim=True)
            logits = logits + torch.logit(prob, eps=1e-4)
        valid = maps[:, MAPS - 1:MAPS] > 0.5
        return torch.where(valid, logits, torch.full_like(logits, -20.0))

    def forward(self, query: torch.Tensor, query_valid: torch.Tensor, refs: torch.Tensor,
                ref_fraction: torch.Tensor, ref_valid: torch.Tensor) -> torch.Tensor:
        """Foreground logits ``(B, 1, 64, 64)``; padding cells get a very low logit. References at full grid size
        or already pooled (full size when the head is ``fitted``)."""
        return self.decode(self.maps(query, query_valid, refs, ref_fraction, ref_valid))


__all__ = ["RelationalHead", "relational_maps", "fitted_maps"]
