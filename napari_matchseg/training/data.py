"""Training data: a dataset split resized into memory, with its retrieved support neighbours.

A *task* is one dataset (one modality and structure). Episodes are drawn from one task at a time: a query
and k supports chosen among the query's nearest neighbours in the task's training images (retrieved with
the bank's retriever, so training sees the supports that inference will see).
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..image_io import read_image, read_mask
from ..retrieval import get_retriever, l2_normalize
from ..tensors import mask_to_working, to_working


@dataclasses.dataclass
class Split:
    """One dataset split in memory at the working size."""

    name: str
    ids: list[str]
    images: torch.Tensor  # (N, 3, S, S) uint8
    masks: torch.Tensor  # (N, 1, S, S) uint8 in {0, 1}
    vectors: np.ndarray  # (N, D) retrieval vectors of the original images

    def __len__(self) -> int:
        return len(self.ids)


def read_manifest(root: Path, name: str, split: str, groups: tuple[str, ...] | None = None) -> list[str]:
    f = root / name / "manifest.csv"
    if not f.is_file():
        raise InputError(f"{f} not found: expected <root>/<dataset>/manifest.csv with columns id,split,group")
    with open(f) as fh:
        return [r["id"] for r in csv.DictReader(fh) if r["split"] == split and (groups is None or r["group"] in groups)]


def load_split(root: str | Path, name: str, split: str, size: int, groups: tuple[str, ...] | None = None,
               retriever: str = "handcrafted", progress: Callable[[int, int], None] | None = None,
               limit: int | None = None) -> Split:
    root = Path(root)
    ids = read_manifest(root, name, split, groups)[:limit]
    if not ids:
        raise InputError(f"no {split} images for {name} in {root}")
    imgs, masks, raw = [], [], []
    for i, rid in enumerate(ids):
        img = read_image(root / name / "images" / f"{rid}.png")
        m = read_mask(root / name / "masks" / f"{rid}.png", img.shape, allow_full=True)
        imgs.append((to_working(img, size) * 255).round().to(torch.uint8))
        masks.append(mask_to_working(m, size).to(torch.uint8))
        raw.append(img)
        if progress:
            progress(i + 1, len(ids))
    vectors = get_retriever(retriever).embed(raw)
    return Split(name, ids, torch.stack(imgs), torch.stack(masks), vectors)


def neighbours(queries: np.ndarray, bank: np.ndarray, n: int, exclude_self: bool) -> np.ndarray:
    """(Q, n) indices of the most similar bank rows per query, best first."""
    sims = l2_normalize(queries) @ l2_normalize(bank).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    n = min(n, bank.shape[0] - (1 if exclude_self else 0))
    idx = np.argpartition(-sims, n - 1, axis=1)[:, :n]
    order = np.take_along_axis(-sims, idx, 1).argsort(1, kind="stable")
    return np.take_along_axis(idx, order, 1)
