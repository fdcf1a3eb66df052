"""``matchseg eval --interactive``: how many clicks a proposal needs, from a deterministic simulated user.

Each image starts from the pipeline's proposal (nothing with ``-k 0`` or a proposer that uses no references), then
the simulated user (:mod:`napari_matchseg.simulated_user`) clicks where the mask is most wrong, and every click
re-proposes with all clicks so far, as the plugin does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .image_io import read_image, read_mask
from .metrics import all_metrics
from .simulated_user import REPORTED_CLICKS, clicks_to_reach, simulate


def check_interactive(pipeline) -> None:
    proposer = pipeline.proposer
    if not proposer.takes_prompts:
        raise InputError(f"--interactive needs a proposer that takes clicks (context, litemedsam); the "
                         f"{proposer.name} proposer takes none")


def interactive_row(pipeline, bank, img_path: str | Path, mask_path: str | Path, max_clicks: int = 20,
                    rng: np.random.Generator | None = None) -> dict[str, Any]:
    """One row of ``matchseg eval --interactive``: the proposal's metrics (an empty mask's without references),
    then :func:`click_scores`."""
    check_interactive(pipeline)
    image = read_image(img_path)
    truth = read_mask(mask_path, image.shape, allow_full=True)
    proposal = None
    if uses_references(pipeline, bank):
        proposal = pipeline.propose(bank, image, rng=rng)
    first = proposal.mask(pipeline.config.threshold) if proposal is not None else np.zeros(truth.shape, bool)
    metrics = all_metrics(first, truth)
    return {"image": Path(img_path).name, **{k: round(v, 6) for k, v in metrics.items()},
            "gt_empty": not truth.any(), "supports": " ".join(s.id for s in proposal.supports) if proposal else "",
            "refinement": proposal.note if proposal else "",
            **click_scores(pipeline, bank, image, truth, max_clicks, rng, first=first)}


def uses_references(pipeline, bank) -> bool:
    return bool(pipeline.config.k > 0 and pipeline.proposer.uses_supports and bank is not None and len(bank))


def click_scores(pipeline, bank, image: np.ndarray, truth: np.ndarray, max_clicks: int = 20,
                 rng: np.random.Generator | None = None, first: np.ndarray | None = None) -> dict[str, Any]:
    """NoC@85, NoC@90, Dice after 0 and :data:`REPORTED_CLICKS` clicks for one image; ``first``: the mask before
    any click when it is already known (else the pipeline's proposal, or nothing without references)."""
    check_interactive(pipeline)
    threshold = pipeline.config.threshold
    with_references = uses_references(pipeline, bank)
    if first is None and with_references:
        first = pipeline.propose(bank, image, rng=rng).mask(threshold)

    def predict(points):
        return pipeline.propose(bank if with_references else None, image, rng=rng,
                                prompts={"points": points}).mask(threshold)

    dices = simulate(predict, truth, max_clicks, first)
    return {"noc85": clicks_to_reach(dices, 0.85), "noc90": clicks_to_reach(dices, 0.9),
            "dice_0_clicks": round(dices[0], 6),
            **{f"dice_{n}_clicks": round(dices[min(n, max_clicks)], 6) for n in REPORTED_CLICKS}}


def summarize_clicks(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``noc85_mean``, ``noc90_mean`` and ``dice_at_clicks`` {"1", "3", "5"} over rows of :func:`click_scores`."""
    return {"noc85_mean": float(np.mean([r["noc85"] for r in rows])),
            "noc90_mean": float(np.mean([r["noc90"] for r in rows])),
            "dice_at_clicks": {str(n): float(np.mean([r[f"dice_{n}_clicks"] for r in rows]))
                               for n in REPORTED_CLICKS}}


__all__ = ["interactive_row", "click_scores", "summarize_clicks", "check_interactive"]
