"""Train the in-context memory-attention head on cached LiteMedSAM embeddings, in resumable runs (issue 36, stage 3).

    .venv/bin/python benchmarks/encode_split.py --dataset DATASETS --split train val \\
        --cache ~/.cache/napari-matchseg/bench-context                    # the embeddings, once (resumable)
    .venv/bin/python benchmarks/train_context_head.py --minutes 40        # a run; run it again to continue
    .venv/bin/python benchmarks/train_context_head.py --kind relational --fitted --synthetic 0.3 --rotate 0 \
        --map-cache DIR --steps 4000                                      # the relational head (docs/context.md)

Training: the train splits of ``--train`` (default: every shared dataset but drive, tg3k and fuseg, which stay
out while the head is designed), only images whose embedding is cached. Validation: the first ``--val-n`` cached
val images of every dataset, each with its ``k`` nearest cached train images (by mean embedding) as references;
cell-level Dice of the head and of the training-free map (``in_context``, method ``mean``) on the same episodes.
State and logs live in ``--run`` (outside the work tree); ``--export`` copies the best weights and the log.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_foundation import machine  # noqa: E402
from context_data import DATASETS, DEFAULT_WORK  # noqa: E402

from napari_matchseg.image_io import check_image, content_hash, read_image, read_mask  # noqa: E402
from napari_matchseg.in_context import (CELL, GRID, References, build_scorers, mask_at_input,  # noqa: E402
                                        mask_to_cells, score_query, valid_cells)
from napari_matchseg.litemedsam import EMBEDDING_SHAPE, scaled_size  # noqa: E402
from napari_matchseg.modeling.heads import build_context_head  # noqa: E402
from napari_matchseg.training.context_head import Episodes, Item, Settings, input_pool, train  # noqa: E402
from napari_matchseg.training.map_cache import MapCache  # noqa: E402
from napari_matchseg.training.data import read_manifest  # noqa: E402
from napari_matchseg.training.train import GROUPS  # noqa: E402

HELD_OUT = ("drive_vessels", "fuseg_footulcer", "tg3k_thyroid")
CACHES = (DEFAULT_WORK, Path.home() / ".cache" / "napari-matchseg" / "sam-match")
DEFAULT_RUN = Path.home() / ".cache" / "napari-matchseg" / "context-head" / "run-1"


def cached_files(caches) -> dict[str, Path]:
    out = {}
    for c in caches:
        for p in glob.glob(str(Path(c) / "features" / "litemedsam-*" / "*.npy")):
            out.setdefault(Path(p).stem, Path(p))
    return out


class Hashes:
    """Content hashes of the dataset images, kept beside the runs (hashing every image again costs minutes)."""

    def __init__(self, path: Path):
        self.path = path
        self.known = json.loads(path.read_text()) if path.is_file() else {}
        self.changed = False

    def __call__(self, f: Path) -> str:
        st = f.stat()
        key, stamp = str(f), [st.st_size, st.st_mtime_ns]
        if self.known.get(key, [None])[:2] != stamp:
            self.known[key] = [*stamp, content_hash(check_image(read_image(f)))]
            self.changed = True
        return self.known[key][2]

    def save(self) -> None:
        if self.changed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.known))
            tmp.replace(self.path)


def load_items(data: Path, name: str, split: str, files: dict[str, Path], limit: int | None = None,
               hashes: Hashes | None = None) -> list[Item]:
    """The split's images whose embedding is cached (in manifest order), as training items."""
    items = []
    for rid in read_manifest(data, name, split, GROUPS.get(name)):
        if limit is not None and len(items) >= limit:
            break
        path = data / name / "images" / f"{rid}.png"
        f = files.get(hashes(path) if hashes else content_hash(check_image(read_image(path))))
        if f is None:
            continue
        img = check_image(read_image(path))
        mask = read_mask(data / name / "masks" / f"{rid}.png", img.shape, allow_full=True)
        if split != "train" and not mask.any():
            continue
        feats = torch.from_numpy(np.load(f).reshape(EMBEDDING_SHAPE))  # float16
        scaled = scaled_size(*img.shape[:2])
        rows, cols = valid_cells(scaled)
        frac, valid = torch.zeros(1, 64, 64), torch.zeros(1, 64, 64)
        frac[0, :rows, :cols] = mask_to_cells(mask, scaled)
        valid[0, :rows, :cols] = 1
        pixels = torch.zeros(1, GRID * CELL, GRID * CELL, dtype=torch.uint8)
        pixels[0, :scaled[0], :scaled[1]] = (mask_at_input(mask, scaled)[0, 0] >= 0.5).to(torch.uint8)
        items.append(Item(feats, frac, valid, f"{name}/{rid}", pixels=pixels))
    return items


def val_episodes(queries: list[Item], pool: list[Item], k: int) -> list[tuple[Item, list[Item]]]:
    if not pool:
        return []
    sig = torch.stack([p.signature for p in pool])
    return [(q, [pool[int(i)] for i in torch.argsort(-(sig @ q.signature))[:k]]) for q in queries]


def training_free(episodes) -> float:
    """Cell-level Dice of the training-free map (method 'mean') on the same episodes."""
    scores = []
    for q, refs in episodes:
        cells = []
        for r in refs:
            rows, cols = int(r.valid[0, :, 0].sum()), int(r.valid[0, 0].sum())
            cells.append(References(torch.nn.functional.normalize(r.features[:, :rows, :cols].float().flatten(1).T,
                                                                  dim=1), r.fraction[0, :rows, :cols].flatten()))
        rows, cols = int(q.valid[0, :, 0].sum()), int(q.valid[0, 0].sum())
        scorers = build_scorers(References.concat(cells), "mean")
        prob = score_query(q.features[None].float(), (rows * 4, cols * 4), scorers).prob if scorers \
            else torch.zeros(64, 64)
        pred, truth = prob >= 0.5, q.fraction[0] >= 0.5
        denom = pred.sum() + truth.sum()
        scores.append(1.0 if denom == 0 else float(2 * (pred & truth).sum() / denom))
    return float(np.mean(scores))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--caches", type=Path, nargs="+", default=list(CACHES))
    ap.add_argument("--train", nargs="+", default=[d for d in DATASETS if d not in HELD_OUT])
    ap.add_argument("--run", type=Path, default=DEFAULT_RUN)
    ap.add_argument("--steps", type=int, default=Settings.steps)
    ap.add_argument("--batch", type=int, default=Settings.batch)
    ap.add_argument("--val-every", type=int, default=Settings.val_every)
    ap.add_argument("--val-n", type=int, default=10)
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dim", type=int, default=96)
    ap.add_argument("--residual", action="store_true", help="the head corrects the training-free priors' logit")
    ap.add_argument("--kind", choices=("attention", "relational"), default="attention",
                    help="relational: the head sees only query-reference similarities (modeling/relational_head.py)")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--memory-pool", type=int, default=4)
    ap.add_argument("--swap", type=float, default=Settings.swap)
    ap.add_argument("--rotate", type=float, default=Settings.rotate)
    ap.add_argument("--synthetic", type=float, default=Settings.synthetic,
                    help="share of episodes whose masks are a random rule on the features")
    ap.add_argument("--cross-subject", action="store_true",
                    help="an episode's references never share the query's subject (patient, source image, clip), "
                    "as with a bank of other patients")
    ap.add_argument("--pixel-loss", action="store_true",
                    help="the loss compares the map, upsampled as the proposer does, with the mask's pixels")
    ap.add_argument("--fitted", action="store_true", help="relational: the training-free scorers' maps join its input")
    ap.add_argument("--map-cache", type=Path, help="relational: compute the first --map-batches batches' input maps "
                    "into this folder once (resumable), then train on them")
    ap.add_argument("--map-batches", type=int, default=500)
    ap.add_argument("--export", type=Path, help="copy best.safetensors and log.jsonl here when the run ends")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t = time.time()
    files = cached_files(args.caches)
    hashes = Hashes(args.run.parent / "image-hashes.json")
    train_sets = {n: load_items(args.data, n, "train", files, hashes=hashes) for n in args.train}
    val = {}
    baseline = {}
    for n in DATASETS:
        pool = train_sets[n] if n in train_sets else load_items(args.data, n, "train", files, hashes=hashes)
        val[n] = val_episodes(load_items(args.data, n, "val", files, args.val_n, hashes), pool, 8)
        baseline[n] = training_free(val[n]) if val[n] else float("nan")
    hashes.save()
    print(f"loaded in {time.time() - t:.0f} s: train " + ", ".join(f"{n} {len(v)}" for n, v in train_sets.items())
          + "; val " + ", ".join(f"{n} {len(v)}" for n, v in val.items()), flush=True)
    print("training-free map (cell Dice, same val episodes): " + json.dumps({n: round(v, 4) for n, v in
                                                                              baseline.items()}), flush=True)
    args.run.mkdir(parents=True, exist_ok=True)
    (args.run / "baseline.json").write_text(json.dumps({"machine": machine(), "training_free": baseline}))
    settings = Settings(steps=args.steps, batch=args.batch, val_every=args.val_every, swap=args.swap,
                        rotate=args.rotate, synthetic=args.synthetic, cross_subject=args.cross_subject,
                        pixel_loss=args.pixel_loss)
    if args.kind == "relational":
        config = {"kind": "relational", "width": args.width, "memory_pool": args.memory_pool,
                  **({"fitted": True} if args.fitted else {}), **({"residual": True} if args.residual else {})}
    else:
        config = {"dim": args.dim, "width": args.width, "memory_pool": args.memory_pool,
                  **({"residual": True} if args.residual else {})}
    maps = None
    if args.map_cache:
        head = build_context_head(None, **config)
        made_from = {k: v for k, v in config.items() if k in ("kind", "memory_pool", "fitted")}  # not the network
        drawn = {k: v for k, v in dataclasses.asdict(settings).items()  # options off: as old caches recorded them
                 if k not in ("cross_subject", "pixel_loss") or v}
        meta = {"config": made_from, "settings": drawn | {"steps": None, "val_every": None},
                "train": {n: len(v) for n, v in train_sets.items()}}
        maps = MapCache(args.map_cache, meta, args.map_batches)
        t = time.time()
        if not maps.fill(Episodes(train_sets, settings, input_pool(head)), head, args.minutes,
                         log=lambda s: print(s, flush=True)):
            print(f"maps: {len(maps.missing())} chunks left; run the same command again", flush=True)
            return
        args.minutes = max(1.0, args.minutes - (time.time() - t) / 60)
    result = train(args.run, train_sets, val, settings, config, minutes=args.minutes,
                   log=lambda s: print(s, flush=True), maps=maps)
    print(json.dumps(result), f"machine: {machine()}", flush=True)
    if args.export:
        args.export.mkdir(parents=True, exist_ok=True)
        for f in ("best.safetensors", "log.jsonl", "baseline.json"):
            if (args.run / f).is_file():
                shutil.copyfile(args.run / f, args.export / f)


if __name__ == "__main__":
    main()
