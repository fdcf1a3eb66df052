"""What every proposer does: a foreground probability map for a query, from references (and, later, prompts).

A proposer is built once (loading a model can take seconds) and then called for many images; features that depend
only on a reference are cached in memory and, once :meth:`Proposer.attach_cache` is given the bank's
:class:`~napari_matchseg.feature_cache.FeatureCache`, on disk beside the bank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError

Supports = tuple[Sequence[np.ndarray], Sequence[np.ndarray]]


class Proposer:
    """The contract the pipeline, the CLI and the plugin rely on; subclasses implement :meth:`predict_batch`."""

    name: ClassVar[str] = "proposer"
    uses_supports: bool = True  # False: the proposal ignores the references (no retrieval is needed)
    takes_prompts: ClassVar[bool] = False  # boxes and points from the user (see ``prompts`` below)
    min_k: ClassVar[int] = 1  # 0: the proposer also proposes with no references at all (k = 0)
    model_id: str = ""  # changes whenever the outputs would: keys the bank's feature cache

    features = None  # a TieredCache, when the proposer caches per-reference features

    @property
    def feature_store(self):
        return None if self.features is None else self.features.store

    def attach_cache(self, store) -> None:
        """Read and write per-reference features through ``store`` too (a no-op for proposers without any)."""

    def prepare_references(self, bank, progress=None) -> None:
        """Compute now what depends only on the references, into the attached cache (a batch does this once, on
        the client, so that its workers read it instead of each computing it); a no-op without such features."""

    def warm(self, image: np.ndarray) -> bool:
        """Compute now, possibly on another thread, what a later proposal for ``image`` needs whatever its
        references and prompts (an image embedding); False when there is nothing such (the default)."""
        return False

    def shared_model(self, family: str):
        """A loaded model a refiner of ``family`` may reuse instead of loading its own (None: there is none)."""
        return None

    def predict(self, image: np.ndarray, support_images: Sequence[np.ndarray] = (),
                support_masks: Sequence[np.ndarray] = (), prompts: dict[str, Any] | None = None) -> np.ndarray:
        """Foreground probability (H, W) float32 at the image's own size; threshold it yourself."""
        return self.predict_batch([image], [(support_images, support_masks)],
                                  None if prompts is None else [prompts])[0]

    def predict_with_quality(self, image: np.ndarray, support_images: Sequence[np.ndarray] = (),
                             support_masks: Sequence[np.ndarray] = (),
                             prompts: dict[str, Any] | None = None) -> tuple[np.ndarray, float | None]:
        """(probability, the model's own estimate of its mask's quality in [0, 1], or None where it has none:
        SAM-style decoders predict their mask's IoU). Propagation stops where this estimate drops."""
        return self.predict(image, support_images, support_masks, prompts), None

    def predict_batch(self, images: Sequence[np.ndarray], supports: Sequence[Supports],
                      prompts: Sequence[dict[str, Any] | None] | None = None) -> list[np.ndarray]:
        """Several queries at once (a proposer batches them where it can)."""
        raise NotImplementedError

    def _refuse_prompts(self, prompts) -> None:
        if prompts is not None and any(p for p in prompts) and not self.takes_prompts:
            raise InputError(f"the {self.name} proposer takes no box or point prompts")
