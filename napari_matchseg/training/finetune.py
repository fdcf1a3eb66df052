"""Adapt a MatchSeg checkpoint to a user's own bank in minutes on a CPU.

Episodes are drawn from the bank itself (query = one reference, supports = its retrieved neighbours among
the others); synthetic tasks stay in the mix and the learning rate is low, so the model keeps relying on
its supports instead of memorising the bank.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..bank import ReferenceBank
from ..checkpoint import build_matchseg, save_checkpoint
from ..errors import InputError
from ..retrieval import get_retriever
from ..tensors import mask_to_working, to_working
from .data import Split, neighbours
from .train import Task, TrainConfig, train


INTERACTIVE_STEPS = 200  # the plugin's "Fine-tune on bank": a few minutes on a laptop CPU


def default_output(bank: ReferenceBank) -> Path:
    """Where a bank's own fine-tuned checkpoint goes: inside the bank, so it travels with it."""
    return bank.path / "finetuned" / "matchseg_finetuned.safetensors"


def bank_task(bank: ReferenceBank, size: int, retriever: str = "handcrafted", n_neighbours: int = 16) -> Task:
    if len(bank) < 2:
        raise InputError(f"fine-tuning needs at least 2 references in the bank, it has {len(bank)}")
    ids = bank.ids()
    images = torch.stack([(to_working(bank.load_image(i), size) * 255).round().to(torch.uint8) for i in ids])
    masks = torch.stack([mask_to_working(bank.load_mask(i), size).to(torch.uint8) for i in ids])
    vectors = np.asarray(bank.embeddings(get_retriever(retriever)))
    split = Split("bank", ids, images, masks, vectors)
    return Task(split, None, neighbours(vectors, vectors, n_neighbours, exclude_self=True), None)


def finetune(bank: ReferenceBank, out: str | Path, base: str | Path | None = None, steps: int = 300,
             lr: float = 3e-4, k_max: int = 8, synthetic_fraction: float = 0.3, batch_size: int = 4,
             retriever: str = "handcrafted", seed: int = 0, overwrite: bool = False, device: str = "auto",
             threads: int | None = None, progress: Callable[[int, int, dict], None] | None = None,
             cancel: Callable[[], bool] | None = None, log: Callable[[str], None] = print) -> Path:
    """Fine-tune ``base`` (default: the embedded checkpoint) on ``bank``; writes the result to ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; refusing to overwrite it")
    model, meta = build_matchseg(base)
    task = bank_task(bank, model.config.image_size, retriever)
    run_dir = out.with_name(out.name + ".run")
    cfg = TrainConfig(data_root=str(bank.path), out_dir=str(run_dir), datasets=("bank",), steps=steps,
                      batch_size=batch_size, k_min=1, k_max=min(k_max, len(bank) - 1), lr=lr, warmup=min(20, steps),
                      synthetic_fraction=synthetic_fraction, val_every=max(1, steps // 5), seed=seed,
                      retriever=retriever, init_checkpoint=str(base) if base else "default", device=device,
                      threads=threads)
    result = train(cfg, progress=progress, cancel=cancel, log=log, tasks={"bank": task})
    tuned, tuned_meta = build_matchseg(result["best_checkpoint"])
    save_checkpoint(out, tuned, dict(tuned_meta, finetuned_on=os.path.abspath(bank.path), references=len(bank),
                                     base=meta.get("checkpoint")), overwrite=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


__all__ = ["finetune", "bank_task"]
