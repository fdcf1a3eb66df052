"""The settings of a semi-supervised run (what its ``config.json`` records and resumes by)."""

from __future__ import annotations

import dataclasses

from ...errors import InputError

FINAL_NAME = "matchseg-semi.safetensors"
SELECT_SCORES = {"agreement": "reliability", "confidence": "foreground_confidence"}  # score -> record field
WARMUP_NAME = "warmup.safetensors"  # the labelled-only teacher, before round 1


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
    refine: str = "none"  # or a refiner: "litemedsam" (pretrained, installed) or "sam2" (needs its weights)
    # "round": the round's stored pseudo-labels are the targets; "ema": a mean teacher (an exponential moving
    # average of the network, updated every step) labels each weak view as it is drawn; "auto": "ema", or
    # "round" with a refiner (it refines a round's stored pseudo-labels). Measured on draws of 30
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
        return dataclasses.replace(self, teacher="ema" if self.refine == "none" else "round")

    def check(self) -> None:
        from ...refiners import refiner_choices

        if self.refine not in refiner_choices():
            raise InputError(f"refine must be one of {', '.join(refiner_choices())}, not {self.refine!r}")
        if self.teacher not in ("auto", "round", "ema"):
            raise InputError(f"teacher must be 'auto', 'round' or 'ema', not {self.teacher!r}")
        if self.teacher == "ema" and self.refine != "none":
            raise InputError(f"refine {self.refine!r} refines the stored pseudo-labels of a round; with teacher "
                             "'ema' the targets come from the moving-average network at every step instead. Use "
                             f"teacher 'round' with refine {self.refine!r}")
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
