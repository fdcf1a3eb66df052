"""The options every proposing command shares (bank, k, models from their registries, thresholds, prompts) and
the :class:`~napari_matchseg.pipeline.Pipeline` they describe: ``segment``, ``eval`` and ``propagate`` use them."""

from __future__ import annotations

from ..errors import InputError
from .common import add_registry_options, add_retriever_args


def add_proposal_args(p) -> None:
    """The options of one proposal: the bank, k, the models (from their registries), thresholds."""
    from ..pipeline import PipelineConfig
    from ..proposers import DEFAULT_PROPOSER, PROPOSERS
    from ..refiners import NO_REFINER, REFINERS, refiner_choices

    d = PipelineConfig()
    p.add_argument("--bank", help="reference bank folder (not needed by a proposer that uses no references, e.g. "
                                  "litemedsam with --prompts)")
    p.add_argument("--prompts", help='JSON file: {"image.png": {"boxes": [[x0, y0, x1, y1], ...], "points": '
                                     '[[x, y, 1 or 0], ...]}}, in each image\'s pixels (for proposers that take them)')
    p.add_argument("-k", type=int, default=d.k, help="number of supports (1-32)")
    p.add_argument("--proposer", default=DEFAULT_PROPOSER, choices=PROPOSERS.names(),
                   help="; ".join(f"{e.name}: {e.description}" for e in PROPOSERS))
    flags = add_registry_options(p, PROPOSERS)
    p.add_argument("--refine", default=NO_REFINER, choices=refiner_choices(),
                   help="; ".join(f"{e.name}: {e.description}" for e in REFINERS))
    p.add_argument("--refine-threshold", type=float, default=d.refine_threshold,
                   help="refinement prompts come from pixels whose probability reaches this")
    p.add_argument("--refine-margin", type=int, default=d.refine_margin, help="box margin in pixels")
    add_registry_options(p, REFINERS, skip=flags)
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help="probability above which a pixel is foreground")
    p.add_argument("--support", default=d.support, choices=("retrieved", "random"),
                   help="how supports are chosen (random is the ablation)")
    p.add_argument("--allow-self", action="store_true",
                   help="let a query that is itself in the bank use its own reference as support")
    add_retriever_args(p, per_proposer=True)


def config_from_args(args, bank_optional: bool = False):
    """The :class:`PipelineConfig` that a command's options describe, checked (nothing is loaded).
    ``bank_optional``: the command has references of its own (``propagate``: the volume's labelled slices)."""
    from ..pipeline import PipelineConfig, option_dest
    from ..proposers import PROPOSERS
    from ..refiners import REFINERS
    from ..retrieval import RETRIEVERS

    options = {option_dest(o): getattr(args, option_dest(o))
               for reg in (PROPOSERS, REFINERS, RETRIEVERS) for o in reg.options()}
    config = PipelineConfig(retriever=args.retriever, proposer=args.proposer, refiner=args.refine, options=options,
                            k=args.k, threshold=args.threshold, refine_threshold=args.refine_threshold,
                            refine_margin=args.refine_margin, support=args.support, allow_self=args.allow_self,
                            device=args.device).check()
    proposer = PROPOSERS.get(args.proposer).load()
    works_alone = proposer.min_k == 0 and (args.k == 0 or getattr(args, "prompts", None))  # prompts, no bank
    if args.bank is None and not bank_optional and proposer.uses_supports and not works_alone:
        raise InputError(f"--bank is needed: the {PROPOSERS.get(args.proposer).label} proposer proposes from "
                         "references")
    return config


def pipeline_from_args(args, config=None, bank_optional: bool = False):
    """The bank and the loaded :class:`Pipeline` that a command's options describe (options checked first)."""
    from ..bank import ReferenceBank
    from ..pipeline import Pipeline

    config = config or config_from_args(args, bank_optional)
    bank = ReferenceBank.open(args.bank) if args.bank else None
    return bank, Pipeline(config).load()


def prompts_from_args(args, images) -> dict[str, dict] | None:
    """The prompts file's entries for ``images`` (checked before any work), or None without ``--prompts``."""
    if not args.prompts:
        return None
    from ..proposers import PROPOSERS
    from ..prompt_file import read_prompts

    if not PROPOSERS.get(args.proposer).load().takes_prompts:
        raise InputError(f"--prompts: the {PROPOSERS.get(args.proposer).label} proposer takes no box or point "
                         "prompts (litemedsam does)")
    return read_prompts(args.prompts, images)
