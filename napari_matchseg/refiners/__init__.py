"""Refiners: turn a proposal's confident pixels into prompts for a SAM-style model (SAM-Match), and keep its mask.

A refiner has ``refine(image, probability, threshold=0.95, margin=30) -> Refinement``
(:mod:`napari_matchseg.refiners.prompts`). Registered here like the proposers; ``none`` means no refinement.
"""

from __future__ import annotations

from ..registry import Entry, Option, Registry
from ..sam2_options import SAM2_IMAGE_SIZE, SAM2_MODEL, SAM2_WEIGHTS

REFINERS = Registry("refiner")
REFINERS.register(Entry(
    "sam2", "napari_matchseg.refiners.sam2:Sam2Refiner",
    "refine each proposal with SAM 2 prompts from its confident pixels (SAM-Match)", title="SAM 2",
    options=(SAM2_MODEL, Option("--sam2-checkpoint", "checkpoint", None,
                                "SAM 2 checkpoint for --refine (default: the weights cache)"), SAM2_IMAGE_SIZE),
    weights=SAM2_WEIGHTS, shares_model="sam2"))

REFINERS.register(Entry(
    "litemedsam", "napari_matchseg.refiners.litemedsam:LiteMedSamRefiner",
    "refine each proposal with LiteMedSAM (pretrained, installed with the package) prompted by its confident "
    "pixels; kept only where it agrees with the proposal", weights=("litemedsam",), shares_model="litemedsam",
    title="LiteMedSAM",
    options=(Option("--litemedsam-min-agreement", "min_agreement", 0.85,
                    "keep LiteMedSAM's mask only when its Dice with the proposal reaches this", type=float),
             Option("--litemedsam-margin", "margin_fraction", 0.05,
                    "box margin as a fraction of the image's longer side (instead of --refine-margin)", type=float),
             Option("--litemedsam-points", "use_points", False,
                    "add the positive/negative points to the box (lowered Dice on every val split)", type=bool))))

NO_REFINER = "none"


def refiner_choices() -> tuple[str, ...]:
    return (NO_REFINER, *REFINERS.names())


__all__ = ["REFINERS", "NO_REFINER", "refiner_choices"]
