"""The benchmark's fixed draws for the in-context proposer (shared by bench_context.py and its prefetch step).

Per dataset: banks of the train split, queries = the first ``n`` images of a split with a non-empty mask, and
for each query its reference sets: ``retrieved`` (handcrafted retrieval, top 16), ``random`` (8 of the train split,
drawn once per dataset) and ``foreign`` (8 of another modality's train split, drawn once).
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


def reference_ids(bank, image, rid: str, kind: str, k: int, foreign_bank=None, retriever=None) -> list[str]:
    """The ids of one query's references of ``kind``: ``retrieved`` (``retriever``'s top ``k``, best first;
    default handcrafted),
    ``random`` (``k`` train references drawn once per dataset) or ``foreign`` (``k`` train references of another
    modality's dataset, drawn once). A draw per dataset, not per query: the ablation then costs 2 x 8 encodings
    per dataset instead of 16 per query."""
    if kind == "retrieved":
        return [m.id for m in retrieve(bank, retriever or get_retriever("handcrafted"), image, k=k)]
    if kind in ("random", "foreign"):
        source = foreign_bank if kind == "foreign" else bank
        ids = source.ids()
        seed = int(hashlib.sha256(f"{kind}:{source.path.name}".encode()).hexdigest()[:8], 16)
        return [ids[i] for i in np.random.default_rng(seed).choice(len(ids), size=min(k, len(ids)), replace=False)]
    raise ValueError(kind)


def common_args(ap, split: str, n: int) -> None:
    """The options bench_context.py and bench_clicks.py share."""
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--split", default=split, choices=("val", "test"))
    ap.add_argument("--n", type=int, default=n)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json")
    ap.add_argument("--retriever", default="handcrafted", choices=("handcrafted", "medsam"),
                    help="how references are retrieved (medsam: LiteMedSAM's cached embeddings, meanstd pooling)")


def make_retriever(name: str, predictor):
    """``--retriever``'s retriever for :func:`reference_ids` (medsam shares ``predictor`` and its cache), or None
    for the handcrafted default."""
    if name == "medsam":
        from napari_matchseg.retrieval.medsam import MedSamRetriever

        return MedSamRetriever(model=predictor)
    return None


def banks(data: Path, work: Path, name: str):
    return train_bank(data, name, work), train_bank(data, FOREIGN[name], work)
