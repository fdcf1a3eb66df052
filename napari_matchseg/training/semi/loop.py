"""The loop: learning from unlabelled images: SAM-Match style pseudo-labels that fine-tune MatchSeg.

First the model is fine-tuned on the labelled bank alone (``warmup_steps``): the pseudo-labels can only be
as good as the model that makes them, and a checkpoint that never saw the bank's kind of image makes poor
ones (measured: on BUSI from a checkpoint trained without BUSI, self-training without this warm-up ended
below plain fine-tuning). Then each round (``matchseg semi``, or "Learn from unlabelled" in the plugin):

1. **Pseudo-label** every unlabelled image with the current MatchSeg, supports retrieved from the bank, on
   the weak view (the image and its mirror image, averaged). Confident pixels (``max(p, 1 - p) >=
   confidence``) are kept; with ``refine="litemedsam"`` (or ``"sam2"``) they become prompts and the SAM's
   mask is the label (SAM-Match). Without the refiner's weights the confident prediction itself is the label.
   Pseudo-labels go to
   ``RUN/pseudo/round-<r>/`` (:class:`~napari_matchseg.pseudo_labels.PseudoLabelStore`), never to the bank.
2. **Fine-tune** on batches of labelled episodes (query and supports from the bank, as ``finetune`` does)
   plus unlabelled episodes in FixMatch style: the pseudo-label from the weak view supervises a strongly
   augmented view (same geometry for image and label, strong intensity changes, blur/noise, cut-out, and
   with ``cutmix`` a box of another unlabelled view pasted in with its label), and only confident pixels count
   in the loss.

By default (``teacher="ema"``, a mean teacher) the targets are made at every step, by a moving average of
the network; the round's pseudo-labels choose the images and are stored for review. With ``teacher="round"``
(and always with SAM 2 refinement) the round's stored pseudo-labels are the targets, refreshed once per
round: one forward pass per unlabelled image and round instead of one per step, but on BUSI the rounds'
mistakes then compound in two draws of the labelled images out of three. Everything is resumable: finished
pseudo-labels are kept, training resumes from ``last.pt``, finished rounds from ``round-<r>.safetensors``;
asked for more rounds, a run goes on from its last one (its earlier result is kept beside it). The result,
``RUN/matchseg-semi.safetensors``, carries its settings and pseudo-label statistics. ``RUN`` defaults to
``<bank>.semi`` beside the bank.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ...bank import ReferenceBank
from ...checkpoint import build_matchseg, save_checkpoint
from ...errors import InputError
from ...fsutil import atomic_write_json
from ...image_io import check_image, content_hash
from ...proposers.matchseg import MatchSegPredictor
from ...pseudo_labels import PseudoLabelStore
from ...retrieval import get_retriever
from ...tensors import to_working
from ..data import neighbours
from ..finetune import bank_task, finetune
from ..train import TrainConfig, train
from .batches import Unlabelled, semi_batch
from .config import FINAL_NAME, WARMUP_NAME, SemiConfig
from .pseudo import SamRefiner, load_pseudo, pseudo_label_round, round_stats, select_reliable
from .run_folder import default_run_dir, digest, open_run, tuned_on

Progress = Callable[[int, int, str], None]


def run_semi(bank: ReferenceBank, unlabelled: Sequence[tuple[str, np.ndarray, str]], run_dir: str | Path | None = None,
             base: str | Path | None = None, cfg: SemiConfig | None = None, progress: Progress | None = None,
             cancel: Callable[[], bool] | None = None, log: Callable[[str], None] = print,
             refiner=None, threads: int | None = None, new_run_if_different: bool = False,
             features_dir: str | Path | None = None) -> Path:
    """Run (or resume) the loop; returns the fine-tuned checkpoint. ``unlabelled``: (name, image, source)
    triples (see :func:`read_unlabelled_folder`); ``refiner``: a ready SAM 2 refiner (tests, benchmarks).
    A run folder started with other settings is an error, or with ``new_run_if_different`` (the plugin) the
    run goes to the first free ``<run>-2``, ``<run>-3``... instead."""
    cfg = (cfg or SemiConfig()).resolved()
    cfg.check()
    model, base_meta = build_matchseg(base)  # a bad checkpoint fails here, before any folder is made
    if cfg.warmup_steps and base is not None and tuned_on(base_meta, bank):
        log("the start checkpoint is already fine-tuned on this bank: no warm-up")
        cfg = dataclasses.replace(cfg, warmup_steps=0)
    if threads:
        torch.set_num_threads(threads)
    items = _unlabelled_items(bank, unlabelled, log)
    # paths recorded absolute: the run, its records and its checkpoints mean the same from any working folder
    run = Path(os.path.abspath(run_dir if run_dir is not None else default_run_dir(bank)))
    settings = {"semi": dataclasses.asdict(cfg), "base": os.path.abspath(base) if base else "default",
                "bank": os.path.abspath(bank.path), "references": digest(bank.ids()),
                "unlabelled": digest([f"{n}:{sha}" for n, _, _, sha in items])}
    run = open_run(run, settings, new_run_if_different, log)
    if (run / FINAL_NAME).exists():
        return run / FINAL_NAME
    sam = SamRefiner(cfg, log, refiner, features_dir=Path(features_dir) if features_dir else run)
    loop = _Loop(bank, items, run, cfg, model.config.image_size, progress, cancel, log, sam)
    previous = loop.warm_up(base)  # the teacher: its pseudo-labels are only as good as what it learnt from the bank
    for r in range(cfg.rounds):
        previous = loop.round(r, previous)  # pseudo-label with the previous model, then fine-tune on them
    metadata = {"semi_supervised": settings, "rounds": loop.stats, "base": base_meta.get("checkpoint"),
                "references": len(bank), "unlabelled_images": len(items),
                "seconds_this_session": round(time.time() - loop.t0), "torch": torch.__version__}
    save_checkpoint(run / FINAL_NAME, build_matchseg(previous)[0], metadata, overwrite=False)
    log(f"semi-supervised checkpoint: {run / FINAL_NAME}")
    return run / FINAL_NAME


def _unlabelled_items(bank: ReferenceBank, unlabelled, log) -> list[tuple[str, np.ndarray, str, str]]:
    """(name, image, source, content hash) of the images to learn from: checked, those already in the bank left out
    (a person's label wins)."""
    if len(bank) < 2:
        raise InputError(f"the semi-supervised loop needs at least 2 labelled references, the bank has {len(bank)}")
    items, skipped = [], 0
    for name, image, source in unlabelled:
        image = check_image(image, name=source or name)
        sha = content_hash(image)
        if bank.find_hash(sha) is not None:
            skipped += 1
            continue
        items.append((name, image, source, sha))
    if skipped:
        log(f"{skipped} of the unlabelled images are already in the bank; they are not pseudo-labelled")
    if not items:
        raise InputError("no unlabelled images left to learn from (all of them are already in the bank)")
    if len({item[0] for item in items}) != len(items):
        raise InputError("unlabelled images need unique names")
    return items


class _Loop:
    """The state of one run between its steps: the labelled task, the unlabelled images, progress."""

    def __init__(self, bank, items, run: Path, cfg: SemiConfig, size: int, progress, cancel, log, sam: SamRefiner):
        self.bank, self.items, self.run, self.cfg, self.size = bank, items, run, cfg, size
        self.cancel, self.log, self.sam = cancel, log, sam
        self.labelled = bank_task(bank, size, cfg.retriever)
        u_vectors = np.asarray(get_retriever(cfg.retriever).embed([item[1] for item in items]))
        working = [(to_working(item[1], size) * 255).round().to(torch.uint8) for item in items]
        self.unl = Unlabelled([item[0] for item in items], torch.stack(working),
                              neighbours(u_vectors, self.labelled.train.vectors, max(16, cfg.k), exclude_self=False))
        self.per_round = len(items) + cfg.steps_per_round
        self.total = cfg.warmup_steps + cfg.rounds * self.per_round
        self.report = progress or (lambda d, t, s: None)
        self.t0, self.stats = time.time(), []

    def warm_up(self, base) -> str | None:
        """Fine-tune on the labelled bank alone first (skipped when ``warmup_steps`` is 0); the model to start from."""
        cfg = self.cfg
        if not cfg.warmup_steps:
            return os.path.abspath(base) if base else None
        warm = self.run / WARMUP_NAME
        if not warm.exists():
            finetune(self.bank, warm, base=base, steps=cfg.warmup_steps, lr=cfg.lr, k_max=cfg.k_max,
                     synthetic_fraction=cfg.synthetic_fraction, batch_size=cfg.labelled_batch + cfg.unlabelled_batch,
                     retriever=cfg.retriever, seed=cfg.seed, device=cfg.device, cancel=self.cancel, log=self.log,
                     progress=lambda s, t, i: self.report(s, self.total, "fine-tuning on the labelled images"))
        return str(warm)

    def round(self, r: int, previous: str | None) -> str:
        """Round ``r``: pseudo-labels from ``previous``, the most reliable kept, fine-tuning on them and the bank."""
        cfg, done = self.cfg, self.run / f"round-{r}.safetensors"
        store = PseudoLabelStore(self.run / "pseudo" / f"round-{r}")
        if done.exists():
            self.stats.append(round_stats(store))
            return str(done)
        start = cfg.warmup_steps + r * self.per_round
        pseudo_label_round(MatchSegPredictor(previous, device=cfg.device), self.bank, self.bank.ids(), self.items,
                           self.unl.support_nn, store, cfg, self.sam, r, previous or "default",
                           lambda n: self.report(start + n, self.total, f"pseudo-labelling (round {r + 1})"),
                           self.cancel)
        keep = select_reliable(store, self.unl.names, cfg.keep_fraction, cfg.select)
        atomic_write_json(store.folder / "selected.json", [self.unl.names[i] for i in keep])
        chosen = self.unl.subset(keep)
        if cfg.teacher == "round":  # a mean teacher makes its own targets
            chosen.masks, chosen.confident = load_pseudo(store, chosen.names, self.size)
        self.stats.append(round_stats(store))
        self.log(f"round {r + 1}: pseudo-labels {json.dumps(self.stats[-1])}")
        self._fine_tune(r, previous, chosen, done, start)
        return str(done)

    def _fine_tune(self, r: int, previous: str | None, chosen: Unlabelled, done: Path, start: int) -> None:
        cfg, bank = self.cfg, self.bank
        tcfg = TrainConfig(data_root=str(bank.path), out_dir=str(self.run / f"train-round-{r}"), datasets=("bank",),
                           steps=cfg.steps_per_round, batch_size=cfg.labelled_batch, k_min=1,
                           k_max=max(1, min(cfg.k_max, len(bank) - 1)), lr=cfg.lr,
                           warmup=min(20, cfg.steps_per_round),
                           synthetic_fraction=cfg.synthetic_fraction, val_every=cfg.steps_per_round,
                           seed=cfg.seed + 1000 * r, retriever=cfg.retriever,
                           init_checkpoint=previous or "default", device=cfg.device, ema_decay=cfg.ema_decay)
        teacher = build_matchseg(previous)[0] if cfg.teacher == "ema" else None
        result = train(tcfg, tasks={"bank": self.labelled}, log=self.log, cancel=self.cancel, teacher=teacher,
                       sampler=lambda rng: semi_batch(self.labelled, chosen, cfg, tcfg, rng, self.size, teacher),
                       progress=lambda s, t, i: self.report(start + len(self.items) + s, self.total,
                                                            f"fine-tuning (round {r + 1})"))
        tuned, meta = build_matchseg(result["best_checkpoint"])
        if teacher is not None:  # the mean teacher is the result, as in Mean Teacher and FixMatch
            tuned, meta = teacher, dict(meta, weights=f"mean teacher, decay {cfg.ema_decay}")
        save_checkpoint(done, tuned, dict(meta, semi_round=r, pseudo_labels=self.stats[-1]))
        shutil.rmtree(tcfg.out_dir, ignore_errors=True)
