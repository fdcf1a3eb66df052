"""One proposal pipeline for the CLI, the plugin, the benchmarks and the learning loops: image -> retrieval ->
supports -> proposer -> refiner -> mask.

A :class:`PipelineConfig` holds every choice (with the defaults, once); a :class:`Pipeline` builds the models it
names on first use, keeps them, and proposes for one image or a whole folder of image/mask pairs.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bank import ReferenceBank
from .errors import InputError
from .image_io import check_image, read_image, read_mask
from .propose import Proposal, propose
from .proposers import DEFAULT_PROPOSER, PROPOSERS, suggested_retriever
from .refiners import NO_REFINER, REFINERS
from .registry import Entry, Option
from .retrieval import RETRIEVERS, get_retriever

MAX_K = 32
SUPPORT_STRATEGIES = ("retrieved", "random")


def option_dest(option: Option) -> str:
    """The key of an option in :attr:`PipelineConfig.options` (and the CLI's ``args``): ``--sam2-model`` ->
    ``sam2_model``."""
    return option.flag.lstrip("-").replace("-", "_")


@dataclasses.dataclass
class PipelineConfig:
    """Every choice a proposal depends on. ``options``: the models' own options by :func:`option_dest` (e.g.
    ``{"checkpoint": "tuned.safetensors", "mirror_tta": True}``); what is not given takes its registry default.
    ``retriever`` None: the proposer's own (``proposers.suggested_retriever``)."""

    retriever: str | None = None
    proposer: str = DEFAULT_PROPOSER
    refiner: str = NO_REFINER
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    k: int = 8
    threshold: float = 0.5
    refine_threshold: float = 0.95
    refine_margin: int = 30
    support: str = "retrieved"
    allow_self: bool = False
    device: str = "auto"

    def __post_init__(self):
        if self.retriever is None:
            self.retriever = suggested_retriever(self.proposer)

    def entries(self) -> list[tuple[str, Entry]]:
        out = [("retriever", RETRIEVERS.get(self.retriever)), ("proposer", PROPOSERS.get(self.proposer))]
        if self.refiner != NO_REFINER:
            out.append(("refiner", REFINERS.get(self.refiner)))
        return out

    def values(self, entry: Entry) -> dict[str, Any]:
        """The constructor keywords of ``entry`` that this config sets."""
        return {o.param: self.options[option_dest(o)] for o in entry.options if option_dest(o) in self.options}

    def check(self) -> PipelineConfig:
        """Refuse values that cannot work, before any model is loaded; returns self."""
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"--threshold must be between 0 and 1, got {self.threshold}")
        if not 0 <= self.k <= MAX_K:
            raise InputError(f"-k must be between 0 and {MAX_K}, got {self.k}")
        if self.k == 0 and self.proposer in PROPOSERS and PROPOSERS.get(self.proposer).load().min_k > 0:
            raise InputError(f"-k 0: the {self.proposer} proposer needs at least 1 reference (the context "
                             "proposer works with -k 0, from prompts)")
        if not 0.0 <= self.refine_threshold <= 1.0:
            raise InputError(f"--refine-threshold is a probability (0 to 1), got {self.refine_threshold}")
        if self.refine_margin < 0:
            raise InputError(f"--refine-margin is a number of pixels (0 or more), got {self.refine_margin}")
        if self.support not in SUPPORT_STRATEGIES:
            raise InputError(f"support strategy must be 'retrieved' or 'random', not {self.support!r}")
        used = {option_dest(o) for _, e in self.entries() for o in e.options}
        for registry in (RETRIEVERS, PROPOSERS, REFINERS):
            for o in registry.options():
                dest = option_dest(o)
                if dest not in used and dest in self.options and self.options[dest] not in (None, o.default):
                    owners = " / ".join(e.label for e in registry.owners(o.flag))
                    chosen = self._chosen(registry.kind)
                    label = registry.get(chosen).label if chosen in registry else chosen
                    raise InputError(f"{o.flag} is a {owners} option; the {label} {registry.kind} has none")
        return self

    def _chosen(self, kind: str) -> str:
        return {"retriever": self.retriever, "proposer": self.proposer, "refiner": self.refiner}[kind]


class Pipeline:
    """Builds the configured models once (or takes ready ones: tests, benchmarks, a plugin that caches them)."""

    def __init__(self, config: PipelineConfig | None = None, *, retriever=None, proposer=None, refiner=None):
        self.config = (config or PipelineConfig()).check()
        self._retriever, self._proposer, self._refiner = retriever, proposer, refiner

    @property
    def retriever(self):
        if self._retriever is None:
            c = self.config
            entry = RETRIEVERS.get(c.retriever)
            extra = {"device": c.device} if entry.takes_device else {}
            self._retriever = get_retriever(c.retriever, **c.values(entry), **extra)
        return self._retriever

    @property
    def proposer(self):
        if self._proposer is None:
            entry = PROPOSERS.get(self.config.proposer)
            self._proposer = entry.build(self.config.values(entry), device=self.config.device,
                                         **self._shared(entry, [self._retriever_if_shares(entry)]))
        return self._proposer

    @property
    def refiner(self):
        c = self.config
        if self._refiner is None and c.refiner != NO_REFINER:
            entry = REFINERS.get(c.refiner)
            self._refiner = entry.build(c.values(entry), device=c.device,
                                        **self._shared(entry, [self.proposer, self._retriever_if_shares(entry)]))
        return self._refiner

    def _retriever_if_shares(self, entry: Entry):
        """The retriever when it is of ``entry``'s model family (building it then: it is needed anyway)."""
        same = entry.shares_model and RETRIEVERS.get(self.config.retriever).shares_model == entry.shares_model
        return self.retriever if same else None

    @staticmethod
    def _shared(entry: Entry, owners) -> dict[str, Any]:
        """``{"model": m}`` when one of ``owners`` already holds a model of ``entry``'s family: one copy in memory,
        and one image embedding per image when retriever, proposer and refiner share an encoder."""
        for owner in owners:
            shared = owner.shared_model(entry.shares_model) if owner is not None and entry.shares_model else None
            if shared is not None:
                return {"model": shared}
        return {}

    def load(self) -> Pipeline:
        """Build every model now (a worker thread calls this so that the first proposal is not the slow one)."""
        _ = self.proposer, self.refiner, self.retriever
        return self

    def prepare(self, bank: ReferenceBank | None, progress: Callable[[int, int], None] | None = None) -> Pipeline:
        """Embed the bank's references for retrieval and compute the proposer's per-reference features now, into
        the bank's caches: what a batch does once before its workers start (they then only read them)."""
        if bank is None or not len(bank) or not self.proposer.uses_supports:
            return self
        from .propose import attach_bank

        bank.embeddings(self.retriever, progress=progress)
        attach_bank(self.proposer, bank)
        self.proposer.prepare_references(bank, progress)
        return self

    def exclusions(self, bank: ReferenceBank | None, image: np.ndarray) -> list[str]:
        """A query that is itself a reference never uses that reference (unless ``allow_self``)."""
        return [] if self.config.allow_self or bank is None else [i for i in [bank.find_image(image)] if i]

    def propose(self, bank: ReferenceBank | None, image, *, exclude: Iterable[str] | None = None,
                rng: np.random.Generator | None = None, progress: Callable[[int, int], None] | None = None,
                cancel: Callable[[], bool] | None = None, prompts: dict | None = None) -> Proposal:
        """A proposal for ``image`` from the bank (None for a proposer that uses no references) and the user's
        ``prompts`` (``{"boxes": [[x0, y0, x1, y1], ...], "points": [[x, y, 1 or 0], ...]}``, for proposers that
        take them); ``exclude`` defaults to :meth:`exclusions`, and k is clamped to the references that are left."""
        img = check_image(image)
        exclude = list(self.exclusions(bank, img) if exclude is None else exclude)
        if self.config.k < self.proposer.min_k:
            raise InputError(f"-k {self.config.k}: the {self.proposer.name} proposer needs at least "
                             f"{self.proposer.min_k} reference")
        k = max(self.proposer.min_k, min(self.config.k, (len(bank) if bank is not None else 0) - len(exclude)))
        c = self.config
        return propose(bank, img, retriever=self.retriever, predictor=self.proposer, k=k, exclude=exclude,
                       strategy=c.support, rng=rng, progress=progress, cancel=cancel, refiner=self.refiner,
                       refine_threshold=c.refine_threshold, refine_margin=c.refine_margin, prompts=prompts)

    def propose_file(self, bank: ReferenceBank | None, path: str | Path, rng: np.random.Generator | None = None,
                     prompts: dict | None = None):
        """(image, proposal) for an image file."""
        image = read_image(path)
        return image, self.propose(bank, image, rng=rng, prompts=prompts)

    def describe(self) -> dict[str, Any]:
        """What produced a result (recorded beside metrics)."""
        return {"k": self.config.k, "support": self.config.support, "retriever": self.retriever.model_id,
                "proposer": self.proposer.model_id, "mirror_tta": getattr(self.proposer, "mirror_tta", False),
                "refine": self.config.refiner}


def image_rng(name: str) -> np.random.Generator:
    """The random generator of one image (random supports): seeded by its file name, so that a proposal does not
    depend on which images came before it, or on which worker of a batch made it."""
    return np.random.default_rng(zlib.crc32(name.encode()))


def evaluate_pair(pipeline: Pipeline, bank: ReferenceBank | None, img_path: str | Path, mask_path: str | Path,
                  prompts: dict | None = None, max_clicks: int = 0) -> dict[str, Any]:
    """One row of :func:`evaluate`: an image's proposal scored against its true mask; with ``max_clicks``, also
    the clicks a simulated user needs (:mod:`napari_matchseg.interactive_eval`)."""
    from .metrics import all_metrics

    name = Path(img_path).name
    if max_clicks:
        from .interactive_eval import interactive_row

        return interactive_row(pipeline, bank, img_path, mask_path, max_clicks, image_rng(name))
    image, proposal = pipeline.propose_file(bank, img_path, image_rng(name), prompts)
    gt = read_mask(mask_path, image.shape, allow_full=True)
    m = all_metrics(proposal.mask(pipeline.config.threshold), gt)
    return {"image": name, **{k: round(v, 6) for k, v in m.items()}, "gt_empty": not gt.any(),
            "supports": " ".join(s.id for s in proposal.supports), "refinement": proposal.note}


def evaluate(pipeline: Pipeline, bank: ReferenceBank | None, pairs: Sequence[tuple[Path, Path]],
             progress: Callable[[int, int], None] | None = None, prompts: dict[str, dict] | None = None) -> dict:
    """Per-image Dice, IoU and HD95 of the proposals against true masks, and their summary (``matchseg eval``)."""
    rows = []
    for i, (img_path, mask_path) in enumerate(pairs):
        rows.append(evaluate_pair(pipeline, bank, img_path, mask_path, (prompts or {}).get(Path(img_path).name)))
        if progress:
            progress(i + 1, len(pairs))
    return {**summarize(rows), **pipeline.describe(), "rows": rows}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means and standard deviations of :func:`evaluate_pair` rows (HD95 where it is defined)."""
    summary: dict[str, Any] = {"n": len(rows), "n_gt_empty": sum(r["gt_empty"] for r in rows)}
    for key in ("dice", "iou", "hd95"):
        vals = np.array([r[key] for r in rows], float)
        vals = vals[np.isfinite(vals)]
        summary[f"{key}_mean"] = float(vals.mean()) if len(vals) else float("nan")
        summary[f"{key}_std"] = float(vals.std()) if len(vals) else float("nan")
    summary["n_hd95_undefined"] = int(sum(not np.isfinite(r["hd95"]) for r in rows))
    return summary


__all__ = ["Pipeline", "PipelineConfig", "Proposal", "evaluate", "evaluate_pair", "image_rng", "option_dest",
           "summarize"]
