"""Episodic MatchSeg training: ``matchseg train`` and ``matchseg finetune`` call :func:`train`.

Every step draws a batch of episodes. An episode picks a task (a dataset, or a synthetic task with
probability ``synthetic_fraction``), a query from that task's training images, and k supports among the
query's retrieved nearest neighbours (the same retriever the bank uses at inference); k is drawn per step
between ``k_min`` and ``k_max`` so the model works for any k. Query and supports are augmented
independently. Validation Dice (supports retrieved from the training split, k = 8) decides the best
checkpoint. Runs are deterministic given the seed and resume exactly from ``last.pt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import build_matchseg, save_checkpoint
from ..device import resolve_device
from ..errors import Cancelled, InputError
from ..modeling import MatchSeg, MatchSegConfig, add_interaction
from .augment import augment
from .config import TrainConfig
from .data import Split, load_split, neighbours
from .losses import segmentation_loss
from .synthetic import synthetic_task

GROUPS = {"busi": ("benign", "malignant")}  # BUSI "normal" images have empty masks (see docs)


@dataclasses.dataclass
class Task:
    train: Split
    val: Split | None
    train_nn: np.ndarray  # (N, n) neighbours of each training image among the others
    val_nn: np.ndarray | None  # (M, n) neighbours of each val image in the training split


def _load_cached(cfg: TrainConfig, name: str, split: str, size: int, log) -> Split:
    cache = Path(cfg.out_dir) / "cache" / f"{name}-{split}-{size}-{cfg.retriever}.pt"
    if cache.is_file():
        d = torch.load(cache, weights_only=True)
        return Split(name, d["ids"], d["images"], d["masks"], d["vectors"].numpy())
    t = time.time()
    s = load_split(cfg.data_root, name, split, size, GROUPS.get(name), cfg.retriever)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ids": s.ids, "images": s.images, "masks": s.masks, "vectors": torch.from_numpy(s.vectors)}, cache)
    log(f"loaded {name}/{split}: {len(s)} images in {time.time() - t:.0f} s")
    return s


def load_tasks(cfg: TrainConfig, size: int, log=print, with_val: bool = True) -> dict[str, Task]:
    tasks = {}
    for name in cfg.datasets:
        tr = _load_cached(cfg, name, "train", size, log)
        va = _load_cached(cfg, name, "val", size, log) if with_val else None
        tasks[name] = Task(tr, va, neighbours(tr.vectors, tr.vectors, cfg.neighbours, exclude_self=True),
                           neighbours(va.vectors, tr.vectors, cfg.neighbours, exclude_self=False) if va else None)
    return tasks


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def draw_supports(nearest: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k supports among the 2k nearest neighbours (best first in ``nearest``), so the choice varies."""
    pool = nearest[: max(k, min(len(nearest), 2 * k))]
    return rng.choice(pool, size=k, replace=len(pool) < k)


def sample_batch(tasks: dict[str, Task], cfg: TrainConfig, rng: np.random.Generator, size: int,
                 k: int | None = None, batch_size: int | None = None):
    """(query (B,3,S,S), query mask (B,1,S,S), supports (B,k,3,S,S), support masks (B,k,1,S,S), None).

    The last item is the per-pixel loss weight (None: every pixel counts)."""
    k = int(rng.integers(cfg.k_min, cfg.k_max + 1)) if k is None else k
    names = list(tasks)
    qi, qm, si, sm = [], [], [], []
    for _ in range(cfg.batch_size if batch_size is None else batch_size):
        if not names or rng.random() < cfg.synthetic_fraction:
            imgs, masks = synthetic_task(rng, 1 + k, size)
        else:
            task = tasks[names[int(rng.integers(len(names)))]]
            q = int(rng.integers(len(task.train)))
            sup = draw_supports(task.train_nn[q], k, rng)
            idx = torch.from_numpy(np.concatenate([[q], sup]).astype(np.int64))
            imgs, masks = _as_float(task.train.images[idx]), task.train.masks[idx].float()
        a_img, a_mask = augment(imgs[:1], masks[:1], rng, 1.0)
        b_img, b_mask = augment(imgs[1:], masks[1:], rng, 0.5)
        qi.append(a_img[0]), qm.append(a_mask[0]), si.append(b_img), sm.append(b_mask)
    return torch.stack(qi), torch.stack(qm), torch.stack(si), torch.stack(sm), None


@torch.no_grad()
def validate(model: MatchSeg, tasks: dict[str, Task], k: int = 8, batch: int = 8) -> dict[str, float]:
    """Mean Dice per task at the working size, supports = top-k retrieved from the training split."""
    model.eval()
    dev = next(model.parameters()).device
    out = {}
    for name, task in tasks.items():
        if task.val is None:
            continue
        dices = []
        for start in range(0, len(task.val), batch):
            rows = range(start, min(len(task.val), start + batch))
            q = _as_float(task.val.images[list(rows)]).to(dev)
            gt = task.val.masks[list(rows)].bool().to(dev)
            sup = torch.from_numpy(task.val_nn[list(rows), :k].astype(np.int64))
            logits = model(q, _as_float(task.train.images[sup]).to(dev), task.train.masks[sup].float().to(dev))
            pred = logits > 0
            inter = (pred & gt).sum((1, 2, 3)).float()
            card = (pred.sum((1, 2, 3)) + gt.sum((1, 2, 3))).float()
            dices += torch.where(card > 0, 2 * inter / card.clamp_min(1), torch.ones_like(card)).tolist()
        out[name] = float(np.mean(dices))
    model.train()
    return out


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student (buffers copied)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.lerp_(s.detach(), 1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def train(cfg: TrainConfig, progress: Callable[[int, int, dict], None] | None = None,
          cancel: Callable[[], bool] | None = None, log: Callable[[str], None] = print,
          tasks: dict[str, Task] | None = None,
          sampler: Callable[[np.random.Generator], tuple] | None = None,
          teacher: torch.nn.Module | None = None) -> dict[str, Any]:
    """Train (or resume) into ``cfg.out_dir``: ``last.pt`` (resume state), ``best.safetensors``, ``log.jsonl``.

    ``sampler(rng)`` replaces the episode sampler (semi-supervised training brings its own); it returns
    what :func:`sample_batch` returns. ``teacher``: a copy of the network that follows the trained one as an
    exponential moving average (``cfg.ema_decay``) after every step, for a sampler that asks it for targets;
    it is part of the resume state."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.init_checkpoint:  # a checkpoint path, or "default" for the embedded one
        model, init_meta = build_matchseg(None if cfg.init_checkpoint == "default" else cfg.init_checkpoint)
        if cfg.interaction not in (None, model.config.interaction):
            if model.uses_supports:
                raise InputError(f"{cfg.init_checkpoint} was trained with interaction "
                                 f"{model.config.interaction!r}; only a support-free checkpoint (interaction "
                                 f"'none') can be given a different one. Leave out --interaction to keep it")
            model = add_interaction(model, cfg.interaction)
            log(f"{cfg.init_checkpoint}: support-free weights kept, {cfg.interaction} added (starts at zero)")
        cfg.model = model.config.to_dict()
    else:
        if cfg.interaction:
            cfg.model = {**cfg.model, "interaction": cfg.interaction}
        model, init_meta = MatchSeg(MatchSegConfig.from_dict(cfg.model)), {}
    size = model.config.image_size
    if cfg.k_min < 1 or cfg.k_max < cfg.k_min:
        raise InputError(f"need 1 <= k_min <= k_max, got {cfg.k_min}..{cfg.k_max}")
    tasks = tasks if tasks is not None else load_tasks(cfg, size, log)
    dev = resolve_device(cfg.device)
    # bf16 needs no loss scaling; where only fp16 exists (older GPUs, MPS) training stays fp32
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if dev.type == "cuda" and torch.cuda.is_bf16_supported() \
        else contextlib.nullcontext()
    model.to(dev).train()
    if teacher is not None:
        teacher.to(dev).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    state_file = out / "last.pt"
    step, best, best_val, elapsed = 0, -math.inf, {}, 0.0
    if state_file.is_file():
        st = torch.load(state_file, weights_only=True, map_location=dev)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        step, best, elapsed = int(st["step"]), float(st["best"]), float(st["elapsed"])
        best_val = json.loads(st["best_val"])
        if teacher is not None:
            teacher.load_state_dict(st["teacher"])
        log(f"resumed from {state_file} at step {step}")

    def save_state():
        tmp = state_file.with_name("last.pt.tmp")
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "step": step, "best": best, "elapsed": elapsed, "best_val": json.dumps(best_val)}
        if teacher is not None:
            state["teacher"] = teacher.state_dict()
        torch.save(state, tmp)
        tmp.replace(state_file)

    def metadata(val):
        return {"train_config": dataclasses.asdict(cfg), "step": step, "val_dice": val,
                "train_seconds": round(elapsed), "steps_per_second": round(step / max(elapsed, 1e-6), 3),
                "init": init_meta.get("checkpoint"), "torch": torch.__version__}

    running = []
    t0 = time.time() - elapsed
    while step < cfg.steps:
        if cancel is not None and cancel():
            elapsed = time.time() - t0
            save_state()
            raise Cancelled(f"training cancelled at step {step}; resume with the same command")
        rng = np.random.default_rng([cfg.seed, step])
        batch = sampler(rng) if sampler is not None else sample_batch(tasks, cfg, rng, size)
        q, qm, s, sm, w = (None if t is None else t.to(dev, non_blocking=True) for t in batch)
        with amp:
            logits = model(q, s, sm)
        loss = segmentation_loss(logits.float(), qm, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if teacher is not None:
            ema_update(teacher, model, cfg.ema_decay)
        step += 1
        running.append(loss.item())
        elapsed = time.time() - t0
        if progress is not None:
            progress(step, cfg.steps, {"loss": running[-1]})
        if step % cfg.val_every == 0 or step == cfg.steps:
            val = validate(model, tasks, cfg.val_k)
            mean = float(np.mean(list(val.values()))) if val else -float(np.mean(running))
            record = {"step": step, "loss": float(np.mean(running)), "val_dice": val, "val_mean": mean,
                      "elapsed_s": round(elapsed, 1), "lr": sched.get_last_lr()[0]}
            running = []
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            log(json.dumps(record))
            if mean > best:
                best, best_val = mean, val
                save_checkpoint(out / "best.safetensors", model, metadata(val))
            save_state()
    return {"best_val_mean": best, "best_val": best_val, "steps": step, "train_seconds": elapsed,
            "best_checkpoint": str(out / "best.safetensors")}
