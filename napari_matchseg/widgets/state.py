"""What the plugin knows between clicks, without any Qt: the open bank, the models built so far, the proposals.

The bank on disk is the state that matters (it is written as you go); this holds what can be recomputed.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np

from ..bank import ReferenceBank
from ..errors import InputError
from ..settings import Settings
from .edits import MaskWriter
from .effort import EffortLog


@dataclasses.dataclass
class Choices:
    """The user's current choices, read on the GUI thread and handed to a worker (workers never touch widgets)."""

    proposer: str
    retriever: str
    k: int
    device: str
    refiner: str  # "none" or a name in refiners.REFINERS
    mirror_tta: bool
    checkpoint: str
    sam2_image_size: int
    bank: Path | None  # None only for actions that need no bank


class AnnotatorState:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.load()
        self.bank: ReferenceBank | None = None
        self.probabilities: dict[tuple[str, int | None], np.ndarray] = {}  # (layer, slice) -> last proposal
        self._confidence: dict[tuple[str, int | None], tuple[int, float]] = {}  # key -> (id of its map, sureness)
        self.accepted: dict[str, set] = {}  # layer -> slices whose proposal was accepted
        self.last_matches: list = []
        self.suggestions: list = []
        self.semi_config = None  # a SemiConfig for "Learn from unlabelled" (None: its defaults)
        self._proposers: dict[tuple, object] = {}
        self._refiners: dict[tuple, object] = {}
        self._thumbs: dict[tuple, np.ndarray] = {}
        self._prompt_model = None
        self._model_lock = threading.Lock()
        self.edited_on_accept: dict[str, dict] = {}  # layer -> {slice: the user edited the proposal first}
        self.edits = MaskWriter()  # what the plugin wrote on each slice: the user's edits are never overwritten
        self.effort = EffortLog()  # seconds, clicks and boxes per slice, for annotations.csv

    def open_bank(self, path: str) -> ReferenceBank:
        self.bank = ReferenceBank.open(path, create=True)
        return self.bank

    def need_bank(self) -> ReferenceBank:
        if self.bank is None:
            raise InputError("open or create a reference bank first (Reference bank > Open / create)")
        return self.bank

    def need_references(self, at_least: int = 1, what: str = "") -> ReferenceBank:
        bank = self.need_bank()
        if len(bank) < at_least:
            if at_least == 1:
                raise InputError("the bank is empty: label an image and press 'Add as reference' first")
            raise InputError(f"{what} needs at least {at_least} references in the bank")
        return bank

    def pipeline(self, c: Choices):
        """The core pipeline for these choices; its models are built once and kept (call it in a worker: loading
        can take a while), and reused with new choices of k, retriever or mirror."""
        from ..pipeline import Pipeline, PipelineConfig, option_dest
        from ..proposers import PROPOSERS

        options = {"checkpoint": c.checkpoint or None, "sam2_image_size": c.sam2_image_size,
                   "mirror_tta": c.mirror_tta and c.proposer == "matchseg"}
        config = PipelineConfig(retriever=c.retriever, proposer=c.proposer, k=c.k, device=c.device,
                                refiner=c.refiner)
        used = {option_dest(o) for _, e in config.entries() for o in e.options}  # e.g. no checkpoint for litemedsam
        config = dataclasses.replace(config, options={k: v for k, v in options.items() if k in used})
        key = (c.proposer, c.checkpoint, c.device, c.sam2_image_size)
        if key not in self._proposers:
            entry = PROPOSERS.get(c.proposer)
            shared = {"model": self.prompt_model()} if entry.shares_model == "litemedsam" else {}  # one LiteMedSAM
            self._proposers[key] = entry.build(config.values(entry), device=c.device, **shared)
        proposer = self._proposers[key]
        if hasattr(proposer, "mirror_tta"):  # a per-proposal choice: same model, same cached support features
            proposer.mirror_tta = options["mirror_tta"]
        refiner_key = (c.refiner, c.retriever, *key)  # a refiner may share the proposer's or retriever's model
        pipeline = Pipeline(config, proposer=proposer, refiner=self._refiners.get(refiner_key))
        if c.refiner != "none":
            self._refiners[refiner_key] = pipeline.refiner  # built once (sharing a model where it can), then kept
        return pipeline

    @property
    def prompt_model_loaded(self) -> bool:
        return self._prompt_model is not None

    def prompt_model(self):
        """LiteMedSAM for the prompt tools (call it in a worker): the litemedsam proposer's network when that is
        built already (one network, one embedding per image), else its own, built once and kept. Thread-safe: the
        background embedder and a task may ask at once; the second waits for the first's model."""
        with self._model_lock:
            if self._prompt_model is None:
                shared = [m for p in self._proposers.values() if (m := p.shared_model("litemedsam")) is not None]
                if shared:
                    self._prompt_model = shared[0]
                else:
                    from ..litemedsam import LiteMedSamPredictor

                    self._prompt_model = LiteMedSamPredictor(self.settings.device)
            return self._prompt_model

    def review_queue(self, layer_name: str) -> list[tuple[int | None, float]]:
        """This layer's proposals not yet accepted, least sure first: (slice, confidence)."""
        from ..active import proposal_confidence, review_order

        done, sure = self.accepted.get(layer_name, set()), {}
        for key, p in self.probabilities.items():
            if key[0] == layer_name and key[1] not in done:
                cached = self._confidence.get(key)
                if cached is None or cached[0] != id(p):  # a new proposal: scored once, not at every refresh
                    cached = self._confidence[key] = (id(p), proposal_confidence(p))
                sure[key[1]] = cached[1]
        return review_order(sure)

    def thumbnail(self, ref_id: str) -> np.ndarray:
        bank = self.need_bank()
        key = (str(bank.path), ref_id, bank.get(ref_id).mask_sha256)
        if key not in self._thumbs:
            self._thumbs[key] = outlined_thumbnail(bank.load_image(ref_id), bank.load_mask(ref_id))
        return self._thumbs[key]


def outlined_thumbnail(image: np.ndarray, mask: np.ndarray, size: int = 48) -> np.ndarray:
    """A small RGB picture of an image with its mask outlined in red."""
    from scipy import ndimage as ndi

    from ..image_io import to_float_rgb

    rgb = (to_float_rgb(image) * 255).astype(np.uint8)
    rgb[mask & ~ndi.binary_erosion(mask, iterations=2)] = (255, 40, 40)
    ys = np.linspace(0, rgb.shape[0] - 1, size).astype(int)
    xs = np.linspace(0, rgb.shape[1] - 1, size).astype(int)
    return np.ascontiguousarray(rgb[ys][:, xs])
