"""Training the in-context memory-attention head on cached LiteMedSAM embeddings (no encoder in the loop).

An *episode* is one query image of a dataset and K reference images of the same dataset with their masks; the
head learns to mark the query's foreground from what the references' masks say. Half of the episodes take the K
references nearest the query by mean embedding (as retrieval would), half take random ones. Two augmentations
make reading the references pay more than remembering what the training datasets look like: some episodes swap
foreground and background everywhere (only the references tell which side is the object), and some turn every
feature vector of the episode by the same random rotation (similarities between query and references stay, what a
feature means on its own is gone: the kinds of image never seen in training look like that to the head).

Runs are cut by time (``minutes``) and resume exactly: every episode is drawn from ``(seed, step)``, and the
optimizer's state is saved with the model in ``RUN/last.pt`` (plain tensors: loads with ``weights_only=True``).
``RUN/log.jsonl`` gets a line per validation; the best validation's weights go to ``RUN/best.safetensors``
(float16).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..fsutil import atomic_write_bytes
from ..in_context import CELL
from ..modeling.context_head import ContextHead
from ..modeling.heads import build_context_head
from ..modeling.relational_head import MAPS
from .map_cache import MapCache


@dataclasses.dataclass
class Item:
    """One image of a dataset: its embedding (256, 64, 64) float16, mask fraction and valid cells (1, 64, 64)."""

    features: torch.Tensor
    fraction: torch.Tensor
    valid: torch.Tensor
    name: str = ""

    pooled: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # as the head's memory sees it
    pixels: torch.Tensor | None = None  # (1, 256, 256) uint8: the mask at the input's scale (pixel-level loss)

    def memory(self, head_pool: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, fraction, valid) pooled as the head's memory (computed once per item)."""
        if head_pool == 1:  # the head takes the references whole (and converts them itself)
            return self.features, self.fraction, self.valid
        if self.pooled is None or self.pooled[0].shape[-1] != self.features.shape[-1] // head_pool:
            f, fr, v = (F.avg_pool2d(t[None].float(), head_pool)[0] for t in (self.features, self.fraction,
                                                                            self.valid))
            self.pooled = (f, fr, (v > 0.5).float())
        return self.pooled

    @property
    def signature(self) -> torch.Tensor:
        """The mean of the valid cells' normalised features: how retrieval-like references are found."""
        f = F.normalize(self.features.float(), dim=0)
        v = self.valid[0] > 0.5
        return F.normalize(f[:, v].mean(1), dim=0)


@dataclasses.dataclass
class Settings:
    steps: int = 6000
    batch: int = 4
    ks: tuple[int, ...] = (4, 8)  # references per episode, by step parity
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 200
    nearest: float = 0.5  # share of episodes whose references are the query's nearest
    swap: float = 0.25  # share of episodes with foreground and background swapped
    rotate: float = 0.5  # share of episodes whose features are rotated (one random orthogonal matrix each)
    synthetic: float = 0.0  # share of episodes whose masks are a random rule on the features (synthetic_task)
    cross_subject: bool = False  # never take a reference of the query's own subject (patient, source image, clip)
    pixel_loss: bool = False  # the loss compares the upsampled map with the query's mask pixels, not cell fractions
    val_every: int = 250
    seed: int = 0


class Episodes:
    """Deterministic episodes over ``datasets`` ({name: [Item]}): the same (seed, step) gives the same batch."""

    def __init__(self, datasets: dict[str, Sequence[Item]], settings: Settings, pool: int = 4):
        self.names = sorted(n for n, items in datasets.items() if len(items) >= 2)
        if not self.names:
            raise ValueError("training needs at least one dataset with two or more embedded images")
        self.items = {n: list(datasets[n]) for n in self.names}
        self.queries = {n: [i for i, it in enumerate(self.items[n]) if it.fraction.max() > 0] for n in self.names}
        self.sims = {n: _similarities(self.items[n]) for n in self.names}
        self.subjects = {n: [subject(it.name) for it in self.items[n]] for n in self.names}
        self.s = settings
        self.pool = pool

    def batch(self, step: int) -> tuple[torch.Tensor, ...]:
        rng = np.random.default_rng([self.s.seed, step])
        k = self.s.ks[step % len(self.s.ks)]
        rows = [self._episode(rng, k) for _ in range(self.s.batch)]
        return tuple(torch.stack(col) for col in zip(*rows))

    def candidates(self, name: str, q: int) -> np.ndarray:
        """The images that may be the query's references: every other one, or with ``cross_subject`` those of
        other subjects (all others when the dataset has no other subject)."""
        others = [i for i in range(len(self.items[name])) if i != q]
        if self.s.cross_subject:
            subjects = self.subjects[name]
            others = [i for i in others if subjects[i] != subjects[q]] or others
        return np.array(others)

    def _episode(self, rng: np.random.Generator, k: int):
        name = self.names[rng.integers(len(self.names))]
        items = self.items[name]
        q = int(rng.choice(self.queries[name] or range(len(items))))
        others = self.candidates(name, q)
        k = min(k, len(others))
        if rng.random() < self.s.nearest:
            refs = others[np.argsort(-self.sims[name][q, others], kind="stable")[:k]]
        else:
            refs = rng.choice(others, size=k, replace=False)
        swap = rng.random() < self.s.swap
        query, references = items[q], [items[int(i)] for i in refs]
        if rng.random() < self.s.synthetic:
            query, *references = synthetic_task([query, *references], rng, self.pool)
        out = episode_tensors(query, references, swap, self.pool, self.s.pixel_loss)
        if rng.random() < self.s.rotate:
            rot = torch.from_numpy(np.linalg.qr(rng.standard_normal((out[0].shape[0],) * 2))[0]).float()
            query = torch.einsum("dc,chw->dhw", rot, out[0].float()).to(out[0].dtype)
            out = (query, out[1], torch.einsum("dc,kchw->kdhw", rot, out[2]), *out[3:])
        return out


def subject(name: str) -> str:
    """The subject of an item named ``dataset/id``: the id's part before ``__`` (the shared datasets' convention
    for a patient, a source image or a clip of video frames), else the id itself."""
    return name.split("__", 1)[0]


def synthetic_task(items: Sequence[Item], rng: np.random.Generator, pool: int) -> list[Item]:
    """The same images with a made-up object: the cells whose feature points most along one direction (a random
    one, or a random reference cell's own feature), the same rule and threshold for every image. Only the
    references tell what the object is, and it can be any shape: thin, scattered, large or small."""
    feats = [F.normalize(it.features.float(), dim=0) for it in items]
    if rng.random() < 0.5:
        u = torch.from_numpy(rng.standard_normal(feats[0].shape[0])).float()
    else:
        ref = int(rng.integers(1, len(items))) if len(items) > 1 else 0
        cells = torch.nonzero(items[ref].valid[0] > 0.5)
        y, x = cells[int(rng.integers(len(cells)))].tolist()
        u = feats[ref][:, y, x]
    u = F.normalize(u, dim=0)
    scores = [torch.einsum("c,chw->hw", u, f)[None] for f in feats]
    pooled = torch.cat([s[it.valid > 0.5] for s, it in zip(scores, items)])
    threshold = torch.quantile(pooled, 1 - float(rng.uniform(0.03, 0.4)))
    out = []
    for s, it in zip(scores, items):
        frac = (s > threshold).float() * it.valid
        mem = it.memory(pool)
        out.append(Item(it.features, frac, it.valid, it.name,
                        (mem[0], F.avg_pool2d(frac[None], pool)[0] * mem[2], mem[2])))
    return out


def episode_tensors(query: Item, refs: Sequence[Item], swap: bool = False, pool: int = 4,
                    pixels: bool = False) -> tuple[torch.Tensor, ...]:
    """(query, query_valid, refs, ref_fraction, ref_valid, target) of one episode, without a batch dimension; the
    references pooled as a head with ``memory_pool=pool`` sees them. ``pixels``: the target is the query's mask at
    the input's scale (its cells repeated where no mask is kept: toy and synthetic tasks), not the cell fractions."""
    mem = [r.memory(pool) for r in refs]
    feats, frac, valid = (torch.stack(col) for col in zip(*mem))
    target, query_valid = query.fraction, query.valid
    if pixels:
        target = query.pixels.float() if query.pixels is not None else _to_pixels(query.fraction)
        query_valid = _to_pixels(query.valid)
    if swap:
        frac, target = 1 - frac, (1 - target) * query_valid
    return query.features, query.valid, feats, frac * valid, valid, target


def _to_pixels(cells: torch.Tensor) -> torch.Tensor:
    """(1, g, g) cells as (1, 4g, 4g) pixels, each cell's value repeated."""
    return F.interpolate(cells[None].float(), scale_factor=CELL, mode="nearest")[0]


def _similarities(items: Sequence[Item]) -> np.ndarray:
    sig = torch.stack([it.signature for it in items])
    return (sig @ sig.T).numpy()


def loss_fn(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Soft-target BCE plus soft Dice, over the valid cells only. A target finer than the logits (the mask's
    pixels) is compared with the logits upsampled as the proposer upsamples its map (bilinear)."""
    if target.shape[-1] != logits.shape[-1]:
        scale = target.shape[-1] // logits.shape[-1]
        logits = F.interpolate(logits, scale_factor=scale, mode="bilinear", align_corners=False)
        # pixels whose value comes from valid cells alone (not the padding's very low logits)
        valid = (F.interpolate(valid.float(), scale_factor=scale, mode="bilinear", align_corners=False) > 0.999).float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * valid).sum() / valid.sum().clamp_min(1)
    p = torch.sigmoid(logits) * valid
    inter = (p * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return bce + dice.mean()


@torch.no_grad()
def validate(head: ContextHead, val: dict[str, list[tuple[Item, list[Item]]]]) -> dict[str, float]:
    """Mean cell-level Dice (probability >= 0.5 against fraction >= 0.5) per dataset of fixed episodes."""
    head.eval()
    out = {}
    for name, episodes in val.items():
        scores = []
        for query, refs in episodes:
            t = [x[None] for x in episode_tensors(query, refs, pool=input_pool(head))]
            pred = torch.sigmoid(head(*t[:5]))[0] >= 0.5
            truth = t[5][0] >= 0.5
            denom = pred.sum() + truth.sum()
            scores.append(1.0 if denom == 0 else float(2 * (pred & truth).sum() / denom))
        out[name] = float(np.mean(scores))
    head.train()
    return out


def train(run: Path, datasets: dict[str, Sequence[Item]], val: dict[str, list[tuple[Item, list[Item]]]],
          settings: Settings, config: dict | None = None, minutes: float | None = None, log=print,
          maps: MapCache | None = None) -> dict:
    """Train (or go on training) the head in ``run``; stop after ``settings.steps`` or ``minutes``. With ``maps``
    (a filled :class:`MapCache`, for heads with ``maps``/``decode``) the steps replay its stored input maps."""
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    head = build_context_head(None, **(config or {})).train()
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    step, best = 0, -1.0
    last = run / "last.pt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        head = build_context_head(state["model"], **state["config"]).train()
        opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        opt.load_state_dict(state["optimizer"])
        step, best = int(state["step"]), float(state["best"])
        log(f"resumed at step {step} (best validation {best:.4f})")
    episodes = Episodes(datasets, settings, input_pool(head))
    head.train()
    start, losses = time.time(), []
    while step < settings.steps:
        if maps is not None:
            x, target = maps.batch(step, settings.batch, settings.seed)
            logits, valid = head.decode(x), x[:, MAPS - 1:MAPS]
        else:
            *inputs, target = episodes.batch(step)
            logits, valid = head(*inputs), inputs[1]
        lr = settings.lr * _lr_factor(step, settings)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = loss_fn(logits, target, valid)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        out_of_time = minutes is not None and time.time() - start > 60 * minutes
        if step % settings.val_every == 0 or step == settings.steps or out_of_time:
            scores = validate(head, val) if val else {}
            mean = float(np.mean(list(scores.values()))) if scores else -float(np.mean(losses))
            record = {"step": step, "loss": float(np.mean(losses)), "val": scores, "val_mean": mean,
                      "elapsed_s": round(time.time() - start, 1), "lr": lr}
            losses = []
            with open(run / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            log(json.dumps(record))
            if mean > best:
                best = mean
                save_head(head, run / "best.safetensors", {"step": str(step), "val_mean": f"{mean:.4f}"})
            state = {"config": head.config, "model": head.state_dict(), "optimizer": opt.state_dict(),
                     "step": step, "best": best}
            tmp = last.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(last)
        if out_of_time:
            break
    return {"step": step, "best": best, "done": step >= settings.steps}


def input_pool(head) -> int:
    """How a head takes its references in training: pooled by this factor ahead (1: whole)."""
    return getattr(head, "input_pool", head.memory_pool)


def _lr_factor(step: int, s: Settings) -> float:
    if step < s.warmup:
        return (step + 1) / s.warmup
    return float(0.5 * (1 + np.cos(np.pi * min(1.0, (step - s.warmup) / max(1, s.steps - s.warmup)))))


def save_head(head: ContextHead, path: Path, meta: dict[str, str] | None = None) -> None:
    """The head's weights as float16 safetensors, its config in the metadata (written atomically)."""
    from safetensors.torch import save

    tensors = {k: v.detach().half().contiguous() for k, v in head.state_dict().items()}
    metadata = {"config": json.dumps(head.config), **(meta or {})}
    atomic_write_bytes(path, save(tensors, metadata))


__all__ = ["Item", "Settings", "Episodes", "synthetic_task", "episode_tensors", "loss_fn", "validate", "train",
           "save_head", "input_pool"]
