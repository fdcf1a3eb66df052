"""Training-free in-context segmentation on LiteMedSAM's frozen image embeddings: what the references say, as a map.

Every embedding is 256 channels on a 64 x 64 grid (4 x 4 input pixels per cell). Each reference's mask, brought
to that grid, says how much of each cell is foreground; the query's cells are then scored by

* ``prototype``: cosine similarity to several foreground prototypes minus that to several background ones
  (k-means centres of the references' normalised features, weighted by how foreground each cell is);
* ``probe``: a logistic regression fitted on the references' cells (soft targets, a light L2 penalty);
* ``mean``: the mean of both probabilities.

The result is a probability per cell of the query (:class:`ContextMap`), which the ``context`` proposer turns into
prompts for LiteMedSAM's decoder. Nothing here knows about banks, files or Qt.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

GRID = 64  # cells per side of LiteMedSAM's embedding
CELL = 4  # input pixels per cell side (256 / 64)
METHODS = ("prototype", "probe", "mean")
MAX_CELLS = 8192  # reference cells the scorers are fitted on (8 references have 32,768): 3-4 x faster, same Dice


@dataclasses.dataclass
class ContextMap:
    prob: torch.Tensor  # (64, 64) foreground probability per cell; padding cells are 0
    valid: tuple[int, int]  # (rows, cols) of cells the image covers


def valid_cells(scaled: tuple[int, int]) -> tuple[int, int]:
    """The grid cells covered by an image of ``scaled`` (h, w) inside the 256 x 256 input (the rest is padding)."""
    return max(1, math.ceil(scaled[0] / CELL)), max(1, math.ceil(scaled[1] / CELL))


def mask_at_input(mask: np.ndarray, scaled: tuple[int, int]) -> torch.Tensor:
    """``mask`` (the image's own size) brought to the encoder's input scale: (1, 1, h, w) float32 coverage."""
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    return F.interpolate(m, size=scaled, mode="area") if m.shape[-2:] != scaled else m


def mask_to_cells(mask: np.ndarray, scaled: tuple[int, int]) -> torch.Tensor:
    """The fraction of each valid cell that ``mask`` (the image's own size) covers: (rows, cols) float32."""
    m = mask_at_input(mask, scaled)
    rows, cols = valid_cells(scaled)
    m = F.pad(m, (0, cols * CELL - scaled[1], 0, rows * CELL - scaled[0]))
    return F.avg_pool2d(m, CELL)[0, 0]


def cell_features(features: torch.Tensor, scaled: tuple[int, int]) -> torch.Tensor:
    """(rows * cols, 256) L2-normalised features of the valid cells of one (1, 256, 64, 64) embedding."""
    rows, cols = valid_cells(scaled)
    f = features[0, :, :rows, :cols].float().flatten(1).T
    return F.normalize(f, dim=1)


@dataclasses.dataclass
class References:
    """The references' cells: normalised features (N, 256) and their foreground fraction (N,)."""

    features: torch.Tensor
    fraction: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor, scaled: tuple[int, int], mask: np.ndarray) -> References:
        """The cells of one reference: its (1, 256, 64, 64) embedding and its mask at the image's own size."""
        return cls(cell_features(features, scaled), mask_to_cells(mask, scaled).flatten())

    @classmethod
    def clicked(cls, features: torch.Tensor, scaled: tuple[int, int], size: tuple[int, int], points,
                weight: int) -> References:
        """The cells under a user's clicks ``[[x, y, 1 or 0], ...]`` on the image itself (``size``: its (H, W)),
        each repeated ``weight`` times: what the user says of this image outweighs what other images say."""
        rows, cols = valid_cells(scaled)
        feats = cell_features(features, scaled).view(rows, cols, -1)
        picked, labels = [], []
        for x, y, label in points:
            r = min(rows - 1, int(y * scaled[0] / size[0] / CELL))
            c = min(cols - 1, int(x * scaled[1] / size[1] / CELL))
            picked.append(feats[r, c])
            labels.append(float(label))
        f = torch.stack(picked).repeat_interleave(weight, 0)
        return cls(f, torch.tensor(labels).repeat_interleave(weight))

    @classmethod
    def concat(cls, refs: Sequence[References]) -> References:
        return cls(torch.cat([r.features for r in refs]), torch.cat([r.fraction for r in refs]))

    def subsample(self, n: int) -> References:
        """At most ``n`` cells, drawn uniformly with a fixed seed (the same references give the same cells):
        the scorers' fitting cost stays bounded at any k."""
        if len(self.fraction) <= n:
            return self
        keep = torch.randperm(len(self.fraction), generator=torch.Generator().manual_seed(0))[:n]
        return References(self.features[keep], self.fraction[keep])

    @property
    def has_foreground(self) -> bool:
        return bool((self.fraction > 0).any())

    @property
    def has_background(self) -> bool:
        return bool((self.fraction < 1).any())


def kmeans(x: torch.Tensor, weight: torch.Tensor, n: int, iters: int = 10) -> torch.Tensor:
    """``n`` weighted spherical k-means centres of the rows of ``x`` (deterministic: farthest-point start)."""
    keep = weight > 1e-3
    x, weight = x[keep], weight[keep]
    n = max(1, min(n, len(x)))
    centres = [x[int(torch.argmax(weight))]]
    for _ in range(n - 1):
        sim = torch.stack([x @ c for c in centres]).amax(0)
        centres.append(x[int(torch.argmin(sim + (weight <= 0.5) * 2.0))])  # far from all, mostly foreground
    c = torch.stack(centres)
    for _ in range(iters):
        assign = (x @ c.T).argmax(1)
        onehot = F.one_hot(assign, len(c)).float() * weight[:, None]
        sums = onehot.T @ x
        filled = onehot.sum(0) > 0
        c = torch.where(filled[:, None], F.normalize(sums, dim=1), c)
    return c


class PrototypeScorer:
    """Several foreground and background prototypes; a cell's score is its best foreground similarity minus its
    best background similarity, turned into a probability by a sigmoid of slope ``temperature``."""

    def __init__(self, refs: References, n_foreground: int = 4, n_background: int = 8, temperature: float = 20.0):
        self.fg = kmeans(refs.features, refs.fraction, n_foreground)
        self.bg = kmeans(refs.features, 1 - refs.fraction, n_background)
        self.temperature = temperature

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        score = (feats @ self.fg.T).amax(1) - (feats @ self.bg.T).amax(1)
        return torch.sigmoid(self.temperature * score)


class ProbeScorer:
    """A logistic regression on the references' cells (soft targets = the cells' foreground fractions)."""

    def __init__(self, refs: References, l2: float = 1e-5, steps: int = 30):
        x, y = refs.features, refs.fraction
        w = torch.zeros(x.shape[1] + 1, requires_grad=True)
        xb = torch.cat([x, torch.ones(len(x), 1)], 1)
        opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(xb @ w, y) + l2 * (w[:-1] ** 2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.weight = w.detach()

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(feats @ self.weight[:-1] + self.weight[-1])


def score_query(features: torch.Tensor, scaled: tuple[int, int], scorers: Sequence) -> ContextMap:
    """The mean probability of ``scorers`` on every valid cell of the query's (1, 256, 64, 64) embedding."""
    rows, cols = valid_cells(scaled)
    feats = cell_features(features, scaled)
    prob = torch.stack([s(feats) for s in scorers]).mean(0).view(rows, cols)
    full = torch.zeros(GRID, GRID)
    full[:rows, :cols] = prob
    return ContextMap(full, (rows, cols))


def build_scorers(refs: References, method: str) -> list:
    """The scorers of ``method`` fitted on ``refs`` (empty when the references have no foreground)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not refs.has_foreground:
        return []
    refs = refs.subsample(MAX_CELLS)
    scorers = []
    if method in ("prototype", "mean"):
        scorers.append(PrototypeScorer(refs))
    if method in ("probe", "mean"):
        scorers.append(ProbeScorer(refs))
    return scorers


def map_to_image(cmap: ContextMap, scaled: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The cell probabilities as an (H, W) float32 map at the image's own size."""
    rows, cols = cmap.valid
    p = cmap.prob[:rows, :cols][None, None]
    p = F.interpolate(p, scale_factor=CELL, mode="bilinear", align_corners=False)[..., :scaled[0], :scaled[1]]
    p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
    return p[0, 0].clamp(0, 1).numpy().astype(np.float32)


__all__ = ["ContextMap", "References", "METHODS", "build_scorers", "score_query", "map_to_image", "mask_to_cells",
           "mask_at_input", "valid_cells"]
