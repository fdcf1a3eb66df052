"""Pseudo-labels: machine-made masks for unlabelled images, kept apart from the reference bank.

A pseudo-label is a mask plus a *confidence* map: the pixels that may count in a loss. From a MatchSeg
probability map ``p`` a pixel is confident when ``max(p, 1 - p) >= confidence`` (FixMatch's rule, per pixel).
With refinement (SAM-Match: SAM 2 or LiteMedSAM) the confident pixels become prompts and the SAM's mask is the label;
pixels where SAM 2 contradicts a confident prediction are left out.

A :class:`PseudoLabelStore` is a folder that says what it is (``info.json``), with ``masks/<name>.png`` and
``confidence/<name>.png`` (0/255), for a refined one also the model's own mask ``unrefined/<name>.png`` (what
refinement changed), and one JSON line per image in ``labels.jsonl`` (``"kind": "pseudo_label"``,
``"reviewed": false``, how it was made). It is never a bank: the bank accepts only references a person
drew or accepted, so a pseudo-label cannot be mistaken for one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .fsutil import atomic_write_bytes, atomic_write_json
from .image_io import encode_mask_png, read_mask

KIND = "pseudo_label"


def confident_pseudo_label(prob: np.ndarray, confidence: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """(mask, confident) from a probability map: mask = p >= 0.5, confident = max(p, 1 - p) >= confidence."""
    prob = np.asarray(prob, np.float32)
    if prob.ndim != 2:
        raise InputError(f"expected a 2D probability map, got shape {prob.shape}")
    if not 0.5 <= confidence < 1:
        raise InputError(f"confidence must be in [0.5, 1), got {confidence}")
    return prob >= 0.5, (prob >= confidence) | (prob <= 1 - confidence)


def refined_pseudo_label(refiner, image: np.ndarray, prob: np.ndarray, confidence: float = 0.9,
                         prompt_threshold: float = 0.95, margin: int = 30) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(mask, confident, method, note) with a refiner's mask (SAM 2 or LiteMedSAM; ``method`` is the refiner's
    name); falls back to the confident prediction when there is nothing to prompt with (no confident
    foreground) or the refiner declined (its mask disagreed with the prediction)."""
    mask, confident = confident_pseudo_label(prob, confidence)
    r = refiner.refine(image, prob, threshold=prompt_threshold, margin=margin)
    if not r.refined:
        return mask, confident, "confident", r.reason
    sam = np.asarray(r.mask, bool)
    conflict = ((prob >= confidence) & ~sam) | ((prob <= 1 - confidence) & sam)
    return sam, ~conflict, getattr(refiner, "name", "refined"), r.reason


class PseudoLabelStore:
    """One folder of pseudo-labels (for one round of one semi-supervised run)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.folder / "info.json"
        if not info.exists():
            atomic_write_json(info, {"kind": "napari-matchseg pseudo-labels", "reviewed": False,
                                     "note": "machine-made masks for unlabelled images; not references, "
                                             "never added to a bank. confidence/ marks the pixels used in training."})
        self._records = self._read_records()

    def _read_records(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        f = self.folder / "labels.jsonl"
        if f.exists():
            for line in f.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a crash: that image is simply redone
                    continue
                if (self.folder / "masks" / f"{rec['name']}.png").exists():
                    out[rec["name"]] = rec
        return out

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, name: str) -> bool:
        return name in self._records

    def records(self) -> list[dict]:
        return list(self._records.values())

    def add(self, name: str, mask: np.ndarray, confident: np.ndarray, unrefined: np.ndarray | None = None,
            **info) -> dict:
        """Write the mask and confidence map (and ``unrefined``, the model's mask before a refiner changed it),
        then append the record (so a record always has its files)."""
        mask, confident = np.asarray(mask, bool), np.asarray(confident, bool)
        if mask.shape != confident.shape or (unrefined is not None and np.shape(unrefined) != mask.shape):
            raise InputError(f"pseudo-label {name}: mask {mask.shape}, confidence {confident.shape}"
                             + ("" if unrefined is None else f" and unrefined mask {np.shape(unrefined)}")
                             + " differ")
        if unrefined is not None:
            atomic_write_bytes(self.folder / "unrefined" / f"{name}.png", encode_mask_png(np.asarray(unrefined, bool)))
        atomic_write_bytes(self.folder / "masks" / f"{name}.png", encode_mask_png(mask))
        atomic_write_bytes(self.folder / "confidence" / f"{name}.png", encode_mask_png(confident))
        rec = {"name": name, "kind": KIND, "reviewed": False, **info,
               **({"has_unrefined": True} if unrefined is not None else {}),
               "foreground_fraction": round(float(mask.mean()), 5),
               "confident_fraction": round(float(confident.mean()), 5)}
        with open(self.folder / "labels.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records[name] = rec
        return rec

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(mask, confident) as bool arrays."""
        if name not in self._records:
            raise KeyError(f"no pseudo-label for {name!r} in {self.folder}")
        mask = read_mask(self.folder / "masks" / f"{name}.png", allow_full=True)
        return mask, read_mask(self.folder / "confidence" / f"{name}.png", mask.shape, allow_full=True)

    def load_unrefined(self, name: str) -> np.ndarray:
        """The model's own mask before refinement (the pseudo-label itself when it was not refined)."""
        f = self.folder / "unrefined" / f"{name}.png"
        if self._records.get(name, {}).get("has_unrefined") and f.is_file():
            return read_mask(f, allow_full=True)
        return self.load(name)[0]


__all__ = ["PseudoLabelStore", "confident_pseudo_label", "refined_pseudo_label", "KIND"]
