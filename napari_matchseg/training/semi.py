"""Learning from unlabelled images: SAM-Match style pseudo-labels that fine-tune MatchSeg.

First the model is fine-tuned on the labelled bank alone (``warmup_steps``): the pseudo-labels can only be
as good as the model that makes them, and a checkpoint that never saw the bank's kind of image makes poor
ones (measured: on BUSI from a checkpoint trained without BUSI, self-training without this warm-up ended
below plain fine-tuning). Then each round (``matchseg semi``, or "Learn from unlabelled" in the plugin):

1. **Pseudo-label** every unlabelled image with the current MatchSeg, supports retrieved from the bank, on
   the weak view (the image and its mirror image, averaged). Confident pixels (``max(p, 1 - p) >=
   confidence``) are kept; with ``refine="sam2"`` they become SAM 2 prompts and SAM 2's mask is the label
   (SAM-Match). Without SAM 2 weights the confident prediction itself is the label. Pseudo-labels go to
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
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..bank import ReferenceBank
from ..checkpoint import build_matchseg, save_checkpoint
from ..errors import Cancelled, InputError, WeightsError, name_list
from ..fsutil import atomic_write_json, same_folder
from ..image_io import check_image, content_hash, list_images, read_image
from ..proposers.matchseg import MatchSegPredictor
from ..pseudo_labels import PseudoLabelStore, confident_pseudo_label, refined_pseudo_label
from ..retrieval import get_retriever
from .augment import augment, cutmix, strong_photometric
from .data import mask_to_working, neighbours, to_working
from .finetune import bank_task, finetune
from .train import Task, TrainConfig, draw_supports, sample_batch, train

FINAL_NAME = "matchseg-semi.safetensors"
SELECT_SCORES = {"agreement": "reliability", "confidence": "foreground_confidence"}  # score -> record field
WARMUP_NAME = "warmup.safetensors"  # the labelled-only teacher, before round 1
Progress = Callable[[int, int, str], None]


@dataclasses.dataclass
class SemiConfig:
    warmup_steps: int = 600  # labelled-only fine-tuning first, so the teacher knows the bank's domain
    rounds: int = 2
    steps_per_round: int = 300
    labelled_batch: int = 4
    unlabelled_batch: int = 4
    k: int = 8  # supports when pseudo-labelling
    k_max: int = 8  # supports drawn in 1..k_max while training
    lr: float = 3e-4
    confidence: float = 0.9
    keep_fraction: float = 0.5  # train on the most reliable pseudo-labels only
    # how reliability is scored: "agreement" (Dice between the two weak views' masks) or "confidence" (the mean
    # confidence over the pixels predicted foreground); see select_reliable
    select: str = "agreement"
    unlabelled_weight: float = 1.0
    synthetic_fraction: float = 0.3  # as in finetune: keeps the model using its supports
    refine: str = "none"  # or "sam2"
    # "round": the round's stored pseudo-labels are the targets; "ema": a mean teacher (an exponential moving
    # average of the network, updated every step) labels each weak view as it is drawn; "auto": "ema", or
    # "round" with refine="sam2" (SAM 2 refines a round's stored pseudo-labels). Measured on draws of 30
    # labelled images (docs/benchmarks.md): "ema" was ahead of labelled-only fine-tuning in all 20
    # dataset/draw/split cells of five draws, "round" fell behind it by up to 0.048 Dice on BUSI in two of three.
    teacher: str = "auto"
    ema_decay: float = 0.99
    cutmix: float = 0.0  # probability that a strong view gets a box of another unlabelled view and its label
    refine_threshold: float = 0.95
    refine_margin: int = 30
    sam2_model: str = "sam2.1_hiera_tiny"
    sam2_checkpoint: str | None = None
    sam2_image_size: int = 1024
    retriever: str = "handcrafted"
    device: str = "auto"
    seed: int = 0

    def resolved(self) -> SemiConfig:
        """This configuration with ``teacher="auto"`` made concrete (what a run records and resumes by)."""
        if self.teacher != "auto":
            return self
        return dataclasses.replace(self, teacher="round" if self.refine == "sam2" else "ema")

    def check(self) -> None:
        if self.refine not in ("none", "sam2"):
            raise InputError(f"refine must be 'none' or 'sam2', not {self.refine!r}")
        if self.teacher not in ("auto", "round", "ema"):
            raise InputError(f"teacher must be 'auto', 'round' or 'ema', not {self.teacher!r}")
        if self.teacher == "ema" and self.refine == "sam2":
            raise InputError("SAM 2 refines the stored pseudo-labels of a round; with teacher 'ema' the targets "
                             "come from the moving-average network at every step instead. Use teacher 'round' "
                             "with refine 'sam2'")
        if not 0 <= self.cutmix <= 1:
            raise InputError(f"cutmix must be a probability in [0, 1], got {self.cutmix}")
        if not 0 < self.ema_decay < 1:
            raise InputError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.rounds < 1 or self.steps_per_round < 1:
            raise InputError("rounds and steps_per_round must be at least 1")
        if not 0.5 <= self.confidence < 1:
            raise InputError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.warmup_steps < 0:
            raise InputError(f"warmup_steps must be 0 or more, got {self.warmup_steps}")
        if self.select not in SELECT_SCORES:
            raise InputError(f"select must be one of {', '.join(SELECT_SCORES)}, not {self.select!r}")
        if not 0 < self.keep_fraction <= 1:
            raise InputError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if not 1 <= self.k <= 32:
            raise InputError(f"k must be between 1 and 32, got {self.k}")


@dataclasses.dataclass
class Unlabelled:
    """Unlabelled images at the working size, their supports in the bank and (per round) pseudo-labels."""

    names: list[str]
    images: torch.Tensor  # (N, 3, S, S) uint8
    support_nn: np.ndarray  # (N, n) bank rows, most similar first
    masks: torch.Tensor | None = None  # (N, 1, S, S) uint8 pseudo-labels
    confident: torch.Tensor | None = None  # (N, 1, S, S) uint8: 1 = the pixel counts

    def subset(self, rows: Sequence[int]) -> Unlabelled:
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return Unlabelled([self.names[i] for i in rows], self.images[idx], self.support_nn[list(rows)],
                          None if self.masks is None else self.masks[idx],
                          None if self.confident is None else self.confident[idx])


def read_unlabelled_folder(folder: str | Path) -> list[tuple[str, np.ndarray, str]]:
    """(name, image, source path) for every image of a folder; a file that cannot be read is an error."""
    files = list_images(folder)
    if not files:
        raise InputError(f"no images in {folder}")
    names = [p.stem for p in files]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"{folder} holds several images named {name_list(dup)} with different suffixes; rename them")
    return [(p.stem, read_image(p), str(p)) for p in files]


def default_run_dir(bank: ReferenceBank) -> Path:
    return bank.path.with_name(bank.path.name + ".semi")


def layer_run_dir(bank: ReferenceBank, source: str) -> Path:
    """The run folder of one source of unlabelled images (a napari layer's name) beside the bank."""
    return default_run_dir(bank) / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in source)


def run_start(checkpoint: str | Path | None, bank: ReferenceBank) -> str | Path | None:
    """The checkpoint a run on ``bank`` started from when ``checkpoint`` is that run's result, else
    ``checkpoint``: learning again from such a result (the plugin's checkpoint in use) continues that run
    instead of stacking a new one on it. A result learnt on another bank stays the start."""
    if checkpoint is None or Path(checkpoint).name != FINAL_NAME:
        return checkpoint
    try:
        config = json.loads((Path(checkpoint).parent / "config.json").read_text())
        base, run_bank = config["base"], config["bank"]
    except (OSError, ValueError, KeyError, TypeError):
        return checkpoint
    if not same_folder(run_bank, bank.path):
        return checkpoint
    return None if base == "default" else base


def _digest(items: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def _changed(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Names of the settings that differ, nested ones as ``semi.teacher`` (so the message says which)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


def _more_rounds(started: dict, settings: dict) -> bool:
    """Whether ``settings`` only asks for more rounds than the run in a folder was started with: rounds are
    seeded and scheduled by their index alone, so such a run goes on from its last round (as if started so)."""
    return _changed(started, settings) == ["semi.rounds"] and settings["semi"]["rounds"] > started["semi"]["rounds"]


def kept_result_name(rounds: int) -> str:
    """Where a finished run's result goes when more rounds are added to it (nothing finished is overwritten)."""
    return FINAL_NAME.replace(".safetensors", f".{rounds}-rounds.safetensors")


def _open_run(run: Path, settings: dict, new_run_if_different: bool, log) -> Path:
    """The run folder to use: a new one, or one started with these settings (resumed or complete), or with
    fewer rounds (continued)."""
    def started_in(folder: Path) -> dict | None:
        file = folder / "config.json"
        if not file.exists():
            return None
        started = json.loads(file.read_text())
        for key in ("bank", "base"):  # a run started before paths were recorded absolute holds them as typed
            if started.get(key) not in (None, "default"):
                started[key] = os.path.abspath(started[key])
        return started

    if new_run_if_different:
        n, first = 1, run
        while (old := started_in(run)) is not None and old != settings and not _more_rounds(old, settings):
            n += 1
            run = first.with_name(f"{first.name}-{n}")
    started = started_in(run)
    if started is None:
        atomic_write_json(run / "config.json", settings, overwrite=False)
        return run
    if _more_rounds(started, settings):
        before, after = started["semi"]["rounds"], settings["semi"]["rounds"]
        if (run / FINAL_NAME).exists():
            kept = run / kept_result_name(before)
            if kept.exists():
                raise InputError(f"{kept} is in the way of keeping this run's {before}-round result; move it away")
            (run / FINAL_NAME).rename(kept)
            log(f"the {before}-round result is kept as {kept}")
        atomic_write_json(run / "config.json", settings)
        log(f"adding rounds {before + 1}-{after} to the run in {run}")
        return run
    if started != settings:
        changed = _changed(started, settings)
        hint = ""
        fewer = settings["semi"]["rounds"]
        if changed == ["semi.rounds"] and (run / f"round-{fewer - 1}.safetensors").exists():
            hint = f"; its result after {fewer} rounds is round-{fewer - 1}.safetensors there"
        raise InputError(f"{run} holds a run started with other settings ({', '.join(changed)} differ{hint}); "
                         "choose another run folder, or delete this one to start over")
    log(f"{run / FINAL_NAME} is already complete" if (run / FINAL_NAME).exists() else f"resuming the run in {run}")
    return run


def semi_batch(bank: Task, unl: Unlabelled, cfg: SemiConfig, tcfg: TrainConfig, rng: np.random.Generator,
               size: int, teacher: torch.nn.Module | None = None):
    """Labelled episodes (as in fine-tuning) followed by FixMatch episodes on pseudo-labelled images; with a
    ``teacher`` the pseudo-label of each weak view is the teacher's prediction on it (confident pixels only)."""
    k = int(rng.integers(tcfg.k_min, tcfg.k_max + 1))
    q, qm, s, sm, _ = sample_batch({"bank": bank}, tcfg, rng, size, k=k, batch_size=cfg.labelled_batch)
    uq, weak_views, targets, keeps, us, usm = [], [], [], [], [], []
    for _ in range(cfg.unlabelled_batch):
        u = int(rng.integers(len(unl.names)))
        sup = torch.from_numpy(draw_supports(unl.support_nn[u], k, rng).astype(np.int64))
        image = unl.images[u:u + 1].float() / 255
        stored = torch.zeros(1, 2, size, size) if teacher is not None else \
            torch.cat([unl.masks[u:u + 1], unl.confident[u:u + 1]], 1).float()
        weak, target = augment(image, stored, rng, 1.0)  # geometry shared by the view and its label
        b_img, b_mask = augment(bank.train.images[sup].float() / 255, bank.train.masks[sup].float(), rng, 0.5)
        strong, keep = strong_photometric(weak, rng)
        weak_views.append(weak[0]), targets.append(target[0]), keeps.append(keep[0] * cfg.unlabelled_weight)
        uq.append(strong[0]), us.append(b_img), usm.append(b_mask)
    target = torch.stack(targets) if teacher is None else \
        teacher_target(teacher, torch.stack(weak_views), torch.stack(us), torch.stack(usm), cfg.confidence)
    labels = torch.cat([target[:, :1], target[:, 1:] * torch.stack(keeps)], 1)  # the mask, and where it counts
    strong, labels = cutmix(torch.stack(uq), labels, rng, cfg.cutmix)  # (the mixed-in pixels keep their labels)
    return (torch.cat([q, strong]), torch.cat([qm, labels[:, :1]]), torch.cat([s, torch.stack(us)]),
            torch.cat([sm, torch.stack(usm)]), torch.cat([torch.ones_like(qm), labels[:, 1:]]))


@torch.no_grad()
def teacher_target(teacher: torch.nn.Module, weak: torch.Tensor, supports: torch.Tensor, support_masks: torch.Tensor,
                   confidence: float) -> torch.Tensor:
    """(B, 2, S, S): the teacher's masks of the weak views and where it is confident (``max(p, 1 - p)``)."""
    dev = next(teacher.parameters()).device
    p = torch.sigmoid(teacher(weak.to(dev), supports.to(dev), support_masks.to(dev)).float()).cpu()
    return torch.cat([(p >= 0.5).float(), (torch.maximum(p, 1 - p) >= confidence).float()], 1)


class _Refiner:
    """Builds SAM 2 once, on first use; without its weights, says so once and returns None."""

    def __init__(self, cfg: SemiConfig, log, refiner=None):
        self.cfg, self.log, self.refiner, self.tried = cfg, log, refiner, refiner is not None

    def get(self):
        if self.cfg.refine != "sam2":
            return None
        if not self.tried:
            self.tried = True
            from ..refiners.sam2 import Sam2Refiner

            try:
                self.refiner = Sam2Refiner(self.cfg.sam2_model, self.cfg.sam2_checkpoint, self.cfg.device,
                                           self.cfg.sam2_image_size)
            except WeightsError as exc:
                self.log(f"SAM 2 refinement unavailable ({exc}); the confident predictions are the pseudo-labels")
        return self.refiner


def pseudo_label_round(predictor: MatchSegPredictor, bank: ReferenceBank, bank_ids: list[str],
                       items: Sequence[tuple[str, np.ndarray, str, str]], support_nn: np.ndarray,
                       store: PseudoLabelStore,
                       cfg: SemiConfig, refiner: _Refiner, round_: int, checkpoint: str,
                       progress: Callable[[int], None], cancel: Callable[[], bool] | None) -> None:
    """Pseudo-label the images ``store`` lacks (weak view = the image and its mirror, averaged)."""
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def support(i):
        if i not in cache:
            cache[i] = (bank.load_image(i), bank.load_mask(i))
        return cache[i]

    for n, (name, image, source, sha) in enumerate(items):
        if cancel is not None and cancel():
            raise Cancelled(f"pseudo-labelling cancelled ({len(store)} of {len(items)} done); "
                            "run the same command again to resume")
        if name not in store:
            sup_ids = [bank_ids[j] for j in support_nn[n][:cfg.k]]
            sup = [support(i) for i in sup_ids]
            s_img, s_msk = [s[0] for s in sup], [s[1] for s in sup]
            [(p, p_m)] = predictor.predict_with_mirror([image], [(s_img, s_msk)])
            prob = 0.5 * (p + p_m)
            sam = refiner.get()
            if sam is not None:
                mask, conf, method, note = refined_pseudo_label(sam, image, prob, cfg.confidence,
                                                                cfg.refine_threshold, cfg.refine_margin)
            else:
                (mask, conf), method, note = confident_pseudo_label(prob, cfg.confidence), "confident", ""
            store.add(name, mask, conf, reliability=round(_agreement(p >= 0.5, p_m >= 0.5), 5),
                      foreground_confidence=round(foreground_confidence(prob), 5),
                      source=source, image_sha256=sha, round=round_,
                      method=method, note=note, checkpoint=checkpoint, supports=sup_ids)
        progress(n + 1)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Dice between the two weak views' masks (1 when both are empty): how reliable a pseudo-label is.
    On BUSI train images it ranks pseudo-labels by their true Dice with Spearman 0.77 (docs/semi.md)."""
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def foreground_confidence(prob: np.ndarray) -> float:
    """Mean ``max(p, 1 - p)`` over the pixels predicted foreground (over all pixels when there are none): how
    sure the model is of the object it found, which the background's many easy pixels would otherwise hide."""
    prob = np.asarray(prob, np.float32)
    fg = prob >= 0.5
    return float(np.maximum(prob, 1 - prob)[fg if fg.any() else slice(None)].mean())


def select_reliable(store: PseudoLabelStore, names: list[str], keep_fraction: float,
                    by: str = "agreement") -> list[int]:
    """Rows of ``names`` whose pseudo-labels are the most reliable ``keep_fraction`` (ST++-style selection), by
    ``by``: "agreement" (:func:`_agreement`) or "confidence" (:func:`foreground_confidence`)."""
    recs = {r["name"]: r for r in store.records()}
    field = SELECT_SCORES[by]
    missing = [n for n in names if field not in recs[n]]
    if missing:
        raise InputError(f"pseudo-labels in {store.folder} have no {field!r} score ({name_list(missing)}); they "
                         "were made before it existed: use select 'agreement'")
    score = np.array([recs[n][field] for n in names])
    n_keep = max(1, int(round(keep_fraction * len(names))))
    return sorted(np.argsort(-score, kind="stable")[:n_keep].tolist())


def _load_pseudo(store: PseudoLabelStore, names: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    masks, confs = [], []
    for name in names:
        m, c = store.load(name)
        masks.append(mask_to_working(m, size).to(torch.uint8))
        confs.append(mask_to_working(c, size).to(torch.uint8))
    return torch.stack(masks), torch.stack(confs)


def _round_stats(store: PseudoLabelStore) -> dict:
    recs = store.records()
    return {"images": len(recs), "sam2_refined": sum(r["method"] == "sam2" for r in recs),
            "mean_confident_fraction": round(float(np.mean([r["confident_fraction"] for r in recs])), 4),
            "mean_foreground_fraction": round(float(np.mean([r["foreground_fraction"] for r in recs])), 4),
            "selected": len(json.loads((store.folder / "selected.json").read_text()))}


def _tuned_on(meta: dict, bank: ReferenceBank) -> bool:
    """Whether a checkpoint (its metadata) came out of ``finetune`` on this bank (same folder, same number of
    references): then it already is what the warm-up would make."""
    return same_folder(meta.get("finetuned_on"), bank.path) and meta.get("references") == len(bank)


def run_semi(bank: ReferenceBank, unlabelled: Sequence[tuple[str, np.ndarray, str]], run_dir: str | Path | None = None,
             base: str | Path | None = None, cfg: SemiConfig | None = None, progress: Progress | None = None,
             cancel: Callable[[], bool] | None = None, log: Callable[[str], None] = print,
             refiner=None, threads: int | None = None, new_run_if_different: bool = False) -> Path:
    """Run (or resume) the loop; returns the fine-tuned checkpoint. ``unlabelled``: (name, image, source)
    triples (see :func:`read_unlabelled_folder`); ``refiner``: a ready SAM 2 refiner (tests, benchmarks).
    A run folder started with other settings is an error, or with ``new_run_if_different`` (the plugin) the
    run goes to the first free ``<run>-2``, ``<run>-3``... instead."""
    cfg = (cfg or SemiConfig()).resolved()
    cfg.check()
    model, base_meta = build_matchseg(base)  # a bad checkpoint fails here, before any folder is made
    if cfg.warmup_steps and base is not None and _tuned_on(base_meta, bank):
        log("the start checkpoint is already fine-tuned on this bank: no warm-up")
        cfg = dataclasses.replace(cfg, warmup_steps=0)
    if threads:
        torch.set_num_threads(threads)
    if len(bank) < 2:
        raise InputError(f"the semi-supervised loop needs at least 2 labelled references, the bank has {len(bank)}")
    items, skipped = [], 0  # (name, image, source, content hash)
    for name, image, source in unlabelled:
        image = check_image(image, name=source or name)
        sha = content_hash(image)
        if bank.find_hash(sha) is not None:
            skipped += 1  # already labelled by a person: the bank's label wins
            continue
        items.append((name, image, source, sha))
    if skipped:
        log(f"{skipped} of the unlabelled images are already in the bank; they are not pseudo-labelled")
    if not items:
        raise InputError("no unlabelled images left to learn from (all of them are already in the bank)")
    if len({item[0] for item in items}) != len(items):
        raise InputError("unlabelled images need unique names")
    # paths recorded absolute: the run, its records and its checkpoints mean the same from any working folder
    run = Path(os.path.abspath(run_dir if run_dir is not None else default_run_dir(bank)))
    bank_ids = bank.ids()
    semi_settings = dataclasses.asdict(cfg)
    if not cfg.warmup_steps:
        del semi_settings["warmup_steps"]  # absent = no warm-up (what runs started before it existed did)
    if cfg.teacher == "round":  # absent = the round's pseudo-labels (runs started before "ema" existed)
        del semi_settings["teacher"], semi_settings["ema_decay"]
    if not cfg.cutmix:  # absent = no CutMix (runs started before it existed)
        del semi_settings["cutmix"]
    if cfg.select == "agreement":  # absent = agreement (likewise)
        del semi_settings["select"]
    settings = {"semi": semi_settings, "base": os.path.abspath(base) if base else "default",
                "bank": os.path.abspath(bank.path), "references": _digest(bank_ids),
                "unlabelled": _digest([f"{n}:{sha}" for n, _, _, sha in items])}
    run = _open_run(run, settings, new_run_if_different, log)
    final = run / FINAL_NAME
    if final.exists():
        return final

    size = model.config.image_size
    labelled = bank_task(bank, size, cfg.retriever)
    retriever = get_retriever(cfg.retriever)
    u_vectors = np.asarray(retriever.embed([item[1] for item in items]))
    unl = Unlabelled([item[0] for item in items],
                     torch.stack([(to_working(item[1], size) * 255).round().to(torch.uint8) for item in items]),
                     neighbours(u_vectors, labelled.train.vectors, max(16, cfg.k), exclude_self=False))
    sam = _Refiner(cfg, log, refiner)
    per_round = len(items) + cfg.steps_per_round
    total = cfg.warmup_steps + cfg.rounds * per_round
    report = progress or (lambda d, t, s: None)
    t0, stats = time.time(), []
    previous = os.path.abspath(base) if base else None  # recorded with each pseudo-label
    if cfg.warmup_steps:  # the teacher: its pseudo-labels are only as good as what it learnt from the bank
        warm = run / WARMUP_NAME
        if not warm.exists():
            finetune(bank, warm, base=base, steps=cfg.warmup_steps, lr=cfg.lr, k_max=cfg.k_max,
                     synthetic_fraction=cfg.synthetic_fraction, batch_size=cfg.labelled_batch + cfg.unlabelled_batch,
                     retriever=cfg.retriever, seed=cfg.seed, device=cfg.device, cancel=cancel, log=log,
                     progress=lambda s, t, i: report(s, total, "fine-tuning on the labelled images"))
        previous = str(warm)
    for r in range(cfg.rounds):
        done_ckpt = run / f"round-{r}.safetensors"
        store = PseudoLabelStore(run / "pseudo" / f"round-{r}")
        if done_ckpt.exists():
            stats.append(_round_stats(store))
            previous = str(done_ckpt)
            continue
        start = cfg.warmup_steps + r * per_round
        predictor = MatchSegPredictor(previous, device=cfg.device)
        pseudo_label_round(predictor, bank, bank_ids, items, unl.support_nn, store, cfg, sam, r,
                           previous or "default",
                           lambda n: report(start + n, total, f"pseudo-labelling (round {r + 1})"),
                           cancel)
        del predictor
        keep = select_reliable(store, unl.names, cfg.keep_fraction, cfg.select)
        atomic_write_json(store.folder / "selected.json", [unl.names[i] for i in keep])
        chosen = unl.subset(keep)
        if cfg.teacher == "round":  # a mean teacher makes its own targets
            chosen.masks, chosen.confident = _load_pseudo(store, chosen.names, size)
        stats.append(_round_stats(store))
        log(f"round {r + 1}: pseudo-labels {json.dumps(stats[-1])}")
        tcfg = TrainConfig(data_root=str(bank.path), out_dir=str(run / f"train-round-{r}"), datasets=("bank",),
                           steps=cfg.steps_per_round, batch_size=cfg.labelled_batch, k_min=1,
                           k_max=max(1, min(cfg.k_max, len(bank) - 1)), lr=cfg.lr, warmup=min(20, cfg.steps_per_round),
                           synthetic_fraction=cfg.synthetic_fraction, val_every=cfg.steps_per_round,
                           seed=cfg.seed + 1000 * r, retriever=cfg.retriever,
                           init_checkpoint=previous or "default", device=cfg.device, ema_decay=cfg.ema_decay)
        teacher = build_matchseg(previous)[0] if cfg.teacher == "ema" else None
        result = train(tcfg, tasks={"bank": labelled}, log=log, cancel=cancel, teacher=teacher,
                       sampler=lambda rng: semi_batch(labelled, chosen, cfg, tcfg, rng, size, teacher),
                       progress=lambda s, t, i: report(start + len(items) + s, total, f"fine-tuning (round {r + 1})"))
        tuned, meta = build_matchseg(result["best_checkpoint"])
        if teacher is not None:  # the mean teacher is the result, as in Mean Teacher and FixMatch
            tuned, meta = teacher, dict(meta, weights=f"mean teacher, decay {cfg.ema_decay}")
        save_checkpoint(done_ckpt, tuned, dict(meta, semi_round=r, pseudo_labels=stats[-1]))
        shutil.rmtree(tcfg.out_dir, ignore_errors=True)
        previous = str(done_ckpt)
    tuned, _ = build_matchseg(previous)
    metadata = {"semi_supervised": settings, "rounds": stats, "base": base_meta.get("checkpoint"),
                "references": len(bank), "unlabelled_images": len(items),
                "seconds_this_session": round(time.time() - t0), "torch": torch.__version__}
    save_checkpoint(final, tuned, metadata, overwrite=False)
    log(f"semi-supervised checkpoint: {final}")
    return final


__all__ = ["SemiConfig", "run_semi", "foreground_confidence", "select_reliable", "read_unlabelled_folder",
           "default_run_dir", "semi_batch", "FINAL_NAME", "kept_result_name", "run_start"]
