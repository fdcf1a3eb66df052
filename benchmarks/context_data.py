"""The benchmark's fixed draws for the in-context proposer (shared by bench_context.py and its prefetch step).

Per dataset: banks of the train split, queries = the first ``n`` images of a split with a non-empty mask, and
for each query its reference sets: ``retrieved`` (handcrafted retrieval, top 16), ``random`` (8 drawn from the
train split with a seed from the query's id) and ``foreign`` (the top 8 of another modality's train bank).
LiteMedSAM embeddings of every image involved are cached once, on disk, outside the work tree.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval_matchseg import train_bank  # noqa: E402

from napari_matchseg.image_io import read_image, read_mask  # noqa: E402
from napari_matchseg.retrieval import get_retriever, retrieve  # noqa: E402
from napari_matchseg.training.data import read_manifest  # noqa: E402
from napari_matchseg.training.train import GROUPS  # noqa: E402

DATASETS = ("busi", "kvasir", "wbc", "covidqu_lungs", "lgg_flair", "dsb2018_nuclei", "drive_vessels",
            "fuseg_footulcer", "tg3k_thyroid")
SEEN = ("busi", "kvasir", "wbc")  # the shipped MatchSeg v2 was trained on these
UNSEEN = tuple(d for d in DATASETS if d not in SEEN)
FOREIGN = {"busi": "kvasir", "kvasir": "busi", "wbc": "dsb2018_nuclei", "covidqu_lungs": "lgg_flair",
           "lgg_flair": "covidqu_lungs", "dsb2018_nuclei": "wbc", "drive_vessels": "fuseg_footulcer",
           "fuseg_footulcer": "drive_vessels", "tg3k_thyroid": "busi"}
DEFAULT_WORK = Path.home() / ".cache" / "napari-matchseg" / "bench-context"


def queries(data: Path, name: str, split: str, n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, image, mask) of the first ``n`` images of ``split`` whose mask is not empty."""
    out = []
    for rid in read_manifest(data, name, split, GROUPS.get(name)):
        if len(out) >= n:
            break
        img = read_image(data / name / "images" / f"{rid}.png")
        gt = read_mask(data / name / "masks" / f"{rid}.png", img.shape, allow_full=True)
        if gt.any():
            out.append((rid, img, gt))
    return out


def reference_ids(bank, image, rid: str, kind: str, k: int, foreign_bank=None) -> list[str]:
    """The ids of one query's references of ``kind`` (retrieved / random / foreign)."""
    retriever = get_retriever("handcrafted")
    if kind == "retrieved":
        return [m.id for m in retrieve(bank, retriever, image, k=k)]
    if kind == "foreign":
        return [m.id for m in retrieve(foreign_bank, retriever, image, k=k)]
    if kind == "random":
        seed = int(hashlib.sha256(rid.encode()).hexdigest()[:8], 16)
        ids = bank.ids()
        return [ids[i] for i in np.random.default_rng(seed).choice(len(ids), size=min(k, len(ids)), replace=False)]
    raise ValueError(kind)


def banks(data: Path, work: Path, name: str):
    return train_bank(data, name, work), train_bank(data, FOREIGN[name], work)
