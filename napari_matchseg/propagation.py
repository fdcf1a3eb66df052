"""Slice-to-slice propagation through a volume, from the slices a user labelled (or accepted).

From every labelled slice, a walk goes up and one goes down, one slice at a time, until it meets another labelled
slice, the volume's end, or a proposal that says the structure has ended (empty, or not confident). Each step
proposes the next slice with what this volume already says about its neighbours:

* a proposer that uses references (MatchSeg) gets the walk's last ``neighbours`` slices and their masks as
  supports, ahead of the bank's most similar references when a bank is given (up to the pipeline's k);
* a proposer that takes prompts (LiteMedSAM) gets the previous slice's mask as boxes (one per connected part).

A pipeline's refiner is not applied here: each slice already starts from its neighbour's mask.

A slice between two labelled slices is reached from both sides; the proposal from the nearer one is kept (equally
near: their probabilities are averaged). Nothing here imports Qt: the CLI and the plugin call :func:`propagate`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from .errors import Cancelled, InputError
from .proposers.base import Proposer

STATUSES = ("given", "proposed", "stopped", "not reached")
# What propagates unless told otherwise, whatever proposes 2D images: LiteMedSAM from the previous slice's mask
# (MatchSeg v2 drifts from slice to slice; docs/volumes.md has the measurements)
PROPAGATION_PROPOSER = "litemedsam"


@dataclasses.dataclass
class Propagation:
    mask: np.ndarray  # (Z, Y, X) bool: the given slices, and the proposals kept
    probability: np.ndarray  # (Z, Y, X) float32, 0 where nothing was proposed
    status: list[str]  # per slice, one of STATUSES
    notes: list[str]  # why each walk stopped

    @property
    def proposed(self) -> int:
        return self.status.count("proposed")


@dataclasses.dataclass(frozen=True)
class PropagationSettings:
    neighbours: int = 2  # slices of this volume given to a reference-based proposer as supports
    min_confidence: float = 0.6  # mean foreground probability below which the structure is taken to have ended
    min_quality: float = 0.8  # the same for a proposer that predicts its mask's IoU (SAM-style decoders)
    min_area: int = 10  # pixels: a smaller proposal is empty
    box_margin: float = 0.05  # of the box's longer side, around the previous slice's mask (prompt proposers)
    reach: float = 0.25  # a proposal is kept within this part of the previous mask's size (+ 5 px) of that mask
    min_continuity: float = 0.3  # Dice with the previous slice's mask below which the structure has ended
    encode_ahead: bool = False  # embed the next slice on a second thread meanwhile (slower on 2 CPU cores: docs)

    def check(self) -> PropagationSettings:
        if self.neighbours < 1:
            raise InputError(f"neighbours must be at least 1, got {self.neighbours}")
        if not 0 <= self.min_confidence <= 1:
            raise InputError(f"min_confidence is a probability (0 to 1), got {self.min_confidence}")
        if not 0 <= self.min_quality <= 1:
            raise InputError(f"min_quality is a predicted IoU (0 to 1), got {self.min_quality}")
        return self


def default_pipeline(device: str = "auto"):
    """A pipeline whose proposer is :data:`PROPAGATION_PROPOSER` (what propagates unless told otherwise)."""
    from .pipeline import Pipeline, PipelineConfig

    return Pipeline(PipelineConfig(proposer=PROPAGATION_PROPOSER, device=device))


def labelled_slices(labels: np.ndarray) -> list[int]:
    return [int(z) for z in np.flatnonzero(np.asarray(labels).reshape(len(labels), -1).any(axis=1))]


def mask_boxes(mask: np.ndarray, margin: float = 0.05, min_area: int = 10) -> list[list[float]]:
    """One [x0, y0, x1, y1] box per connected part of ``mask`` (parts under ``min_area`` pixels left out)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or (lab[sl] == i).sum() < min_area:
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1
        m = margin * max(y1 - y0, x1 - x0, 1)
        h, w = mask.shape
        boxes.append([max(0.0, x0 - m), max(0.0, y0 - m), min(w - 1.0, x1 + m), min(h - 1.0, y1 + m)])
    return boxes


def propagate(pipeline, volume: np.ndarray, labels: np.ndarray, *, bank=None,
              settings: PropagationSettings | None = None, progress: Callable[[int, int], None] | None = None,
              cancel: Callable[[], bool] | None = None) -> Propagation:
    """Propagate ``labels`` (Z, Y, X; the labelled slices non-empty, the others empty) through ``volume``
    (Z, Y, X or Z, Y, X, C) with ``pipeline``'s proposer (None: :func:`default_pipeline`, LiteMedSAM). Move the
    slice axis first for another direction. ``cancel`` returning True stops it; what was proposed until then is in
    the result (see its notes)."""
    if pipeline is None:
        pipeline = default_pipeline()
    s = (settings or PropagationSettings()).check()
    volume, labels = np.asarray(volume), np.asarray(labels)
    if labels.shape != volume.shape[:3] or labels.ndim != 3:
        raise InputError(f"the labels are {labels.shape} but the volume is {volume.shape[:3]}: they must match")
    proposer = pipeline.proposer
    if not (proposer.uses_supports or proposer.takes_prompts):
        raise InputError(f"the {proposer.name} proposer can use neither neighbouring slices nor their boxes")
    given = labelled_slices(labels)
    if not given:
        raise InputError("no slice is labelled: label (or accept) at least one slice, then propagate")
    n = len(volume)
    walks = [(seed, d) for seed in given for d in (1, -1)]
    total = sum(_walk_length(seed, d, given, n) for seed, d in walks)
    candidates: dict[int, list[tuple[int, np.ndarray]]] = {}
    stops: dict[int, str] = {}
    notes: list[str] = []
    done, cancelled = 0, False
    ahead = _Ahead(proposer if s.encode_ahead else None)
    for seed, d in walks:
        walk = [seed]
        masks = {seed: labels[seed] > 0}
        z = seed + d
        while 0 <= z < n and z not in given:
            if cancel is not None and cancel():
                cancelled = True
                break
            if 0 <= z + d < n and z + d not in given:
                ahead.warm(volume, z + d)  # the next slice's embedding while this one decodes
            prob, quality = _propose_slice(pipeline, bank, volume, z, walk, masks, s)
            done += 1
            if progress is not None:
                progress(done, total)
            prob = _near(prob, masks[walk[-1]], s.reach)
            mask = prob >= pipeline.config.threshold
            reason = _ended(prob, quality, mask, masks[walk[-1]], s)
            if reason:
                stops.setdefault(z, reason)
                notes.append(f"from slice {seed} {'up' if d > 0 else 'down'}: stopped at slice {z} ({reason})")
                break
            candidates.setdefault(z, []).append((abs(z - seed), prob))
            masks[z] = mask
            walk.append(z)
            z += d
        else:
            notes.append(f"from slice {seed} {'up' if d > 0 else 'down'}: reached "
                         f"{'the end of the volume' if not 0 <= z < n else f'labelled slice {z}'}")
        if cancelled:
            notes.append(f"cancelled after {done} slices; the proposals made so far are kept")
            break
    ahead.close()
    if progress is not None and not cancelled:
        progress(total, total)
    return _combine(labels, given, candidates, stops, notes, pipeline.config.threshold)


class _Ahead:
    """Runs ``proposer.warm`` for coming slices on one extra thread, so that slices/s is bounded by the encoder
    alone (the proposal itself waits for a slice still being embedded; errors surface there, not here)."""

    def __init__(self, proposer):
        self.proposer = proposer
        self.pool = None
        if proposer is not None and type(proposer).warm is not Proposer.warm:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(1, thread_name_prefix="matchseg-ahead")

    def warm(self, volume: np.ndarray, z: int) -> None:
        if self.pool is not None and 0 <= z < len(volume):
            self.pool.submit(self.proposer.warm, volume[z])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _walk_length(seed: int, d: int, given: list[int], n: int) -> int:
    ahead = [g for g in given if (g - seed) * d > 0]
    end = min(ahead, key=lambda g: abs(g - seed)) if ahead else (n if d > 0 else -1)
    return abs(end - seed) - 1


def _propose_slice(pipeline, bank, volume, z, walk, masks, s: PropagationSettings) -> np.ndarray:
    proposer, image = pipeline.proposer, volume[z]
    previous = masks[walk[-1]]
    images, sup_masks, prompts = [], [], None
    if proposer.uses_supports:
        near = walk[-s.neighbours:][::-1]
        images, sup_masks = [volume[i] for i in near], [masks[i] for i in near]
        room = pipeline.config.k - len(near)
        if bank is not None and len(bank) and room > 0:
            from .propose import select_supports

            for m in select_supports(bank, pipeline.retriever, image, room):
                images.append(bank.load_image(m.id))
                sup_masks.append(bank.load_mask(m.id))
    if proposer.takes_prompts:
        boxes = mask_boxes(previous, s.box_margin, s.min_area)
        prompts = {"boxes": boxes} if boxes else None
        if prompts is None and not proposer.uses_supports:
            return np.zeros(image.shape[:2], np.float32), None
    prob, quality = proposer.predict_with_quality(image, images, sup_masks, prompts=prompts)
    return np.asarray(prob, np.float32), quality


def _near(prob: np.ndarray, previous: np.ndarray, reach: float) -> np.ndarray:
    """``prob`` outside the neighbourhood of the previous slice's mask set to 0: a structure moves little from
    one slice to the next, and what a proposer finds far from it is something else."""
    from scipy import ndimage

    ys, xs = np.nonzero(previous)
    if not len(ys):
        return prob
    radius = reach * max(np.ptp(ys), np.ptp(xs)) + 5
    return np.where(ndimage.distance_transform_edt(~previous) <= radius, prob, 0).astype(np.float32)


def _ended(prob: np.ndarray, quality: float | None, mask: np.ndarray, previous: np.ndarray,
           s: PropagationSettings) -> str:
    area = int(mask.sum())
    if area < s.min_area:
        return f"empty proposal ({area} pixels)"
    if quality is not None and quality < s.min_quality:
        return f"low predicted quality (IoU {quality:.2f} < {s.min_quality:g})"
    confidence = float(prob[mask].mean())
    if confidence < s.min_confidence:
        return f"not confident (mean foreground probability {confidence:.2f} < {s.min_confidence:g})"
    continuity = 2 * float((mask & previous).sum()) / (area + float(previous.sum()))
    if continuity < s.min_continuity:
        return f"does not continue the previous slice (Dice {continuity:.2f} < {s.min_continuity:g})"
    return ""


def _combine(labels, given, candidates, stops, notes, threshold) -> Propagation:
    n = len(labels)
    mask = np.zeros(labels.shape, bool)
    prob = np.zeros(labels.shape, np.float32)
    status = ["not reached"] * n
    for z in given:
        mask[z], prob[z], status[z] = labels[z] > 0, (labels[z] > 0).astype(np.float32), "given"
    for z, options in candidates.items():
        nearest = min(dist for dist, _ in options)
        prob[z] = np.mean([p for dist, p in options if dist == nearest], axis=0)
        mask[z], status[z] = prob[z] >= threshold, "proposed"
    for z in stops:
        if status[z] == "not reached":
            status[z] = "stopped"
    return Propagation(mask, prob, status, notes)


@dataclasses.dataclass
class ObjectPropagation:
    labels: np.ndarray  # (Z, Y, X) int: each object's own value, on the given and the proposed slices
    objects: dict[int, Propagation]  # label value -> that object's propagation

    @property
    def notes(self) -> list[str]:
        many = len(self.objects) > 1
        return [f"object {v}: {n}" if many else n for v, r in self.objects.items() for n in r.notes]

    def proposed_slices(self) -> list[int]:
        return sorted({z for r in self.objects.values() for z, st in enumerate(r.status) if st == "proposed"})


def propagate_objects(pipeline, volume: np.ndarray, labels: np.ndarray, *, progress=None, **options
                      ) -> ObjectPropagation:
    """:func:`propagate` for each label value of ``labels`` on its own (several objects stay apart, each keeps its
    value); where two objects' proposals meet, the more probable one takes the pixel. ``options``: propagate's."""
    labels = np.asarray(labels)
    values = [int(v) for v in np.unique(labels) if v != 0]
    if not values:
        raise InputError("no slice is labelled: label (or accept) at least one slice, then propagate")
    per_object: dict[int, Propagation] = {}
    for i, v in enumerate(values):
        step = None if progress is None else (lambda done, total, i=i: progress(i * total + done, len(values) * total))
        per_object[v] = propagate(pipeline, volume, (labels == v).astype(np.uint8), progress=step, **options)
    out = np.zeros(labels.shape, np.int64)
    best = np.zeros(labels.shape, np.float32)
    for v, r in per_object.items():
        wins = r.mask & (r.probability >= best)
        out[wins], best[wins] = v, r.probability[wins]
    given = labels != 0
    out[given] = labels[given]
    return ObjectPropagation(out, per_object)


def segment_volume(pipeline, volume: np.ndarray, *, bank=None, progress: Callable[[int, int], None] | None = None,
                   cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """Every slice of ``volume`` proposed on its own from the bank (``matchseg segment`` of a volume, refiner
    included): the (Z, Y, X) mask. :func:`propagate` is the way when some slices are labelled."""
    volume = np.asarray(volume)
    out = np.zeros(volume.shape[:3], bool)
    for z in range(len(volume)):
        if cancel is not None and cancel():
            raise Cancelled("segmentation cancelled")
        out[z] = pipeline.propose(bank, volume[z]).mask(pipeline.config.threshold)
        if progress is not None:
            progress(z + 1, len(volume))
    return out


__all__ = ["segment_volume", "Propagation", "PropagationSettings", "propagate", "propagate_objects",
           "ObjectPropagation", "labelled_slices", "mask_boxes", "STATUSES", "PROPAGATION_PROPOSER"]
