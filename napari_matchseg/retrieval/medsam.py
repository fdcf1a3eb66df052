"""LiteMedSAM image embeddings pooled to a vector: a retriever pretrained on medical images, installed with the package.

The encoder's 256 x 64 x 64 embedding is pooled over the part that holds the image (LiteMedSAM pads the bottom
and right of its 256 x 256 input; the padding would otherwise make every wide image look alike). Pooling:
``mean`` (the channel means), ``meanstd`` (means and standard deviations: texture as well as content), or ``gem``
(generalised mean, p = 3, of the rectified features). The embedding is the one the LiteMedSAM refiner and proposer
prompt, so a pipeline that retrieves and refines with LiteMedSAM encodes each image once (see
:meth:`shared_model`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .base import Retriever

POOLINGS = ("mean", "meanstd", "gem")
_STRIDE = 4  # 256 px input -> 64 x 64 embedding


def pool(features: torch.Tensor, scaled: tuple[int, int], pooling: str) -> np.ndarray:
    """(D,) vector of one (1, C, 64, 64) embedding, over the ``scaled`` (h, w) region that holds the image."""
    h, w = (max(1, -(-s // _STRIDE)) for s in scaled)
    x = features[0, :, :h, :w].float().flatten(1)  # (C, h*w)
    if pooling == "mean":
        v = x.mean(1)
    elif pooling == "meanstd":
        v = torch.cat([x.mean(1), x.std(1, unbiased=False)])
    elif pooling == "gem":
        v = x.clamp_min(1e-6).pow(3).mean(1).pow(1 / 3)
    else:
        raise InputError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    return v.cpu().numpy()


class MedSamRetriever(Retriever):
    """``pooling`` one of :data:`POOLINGS`; ``model``: a LiteMedSamPredictor to share (else built on first use)."""

    name = "medsam"
    batch_size = 4

    def __init__(self, pooling: str = "meanstd", device: str | None = "auto", model=None):
        if pooling not in POOLINGS:
            raise InputError(f"unknown --medsam-pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.pooling, self.device, self._predictor = pooling, device, model

    @property
    def predictor(self):
        if self._predictor is None:
            from ..litemedsam import LiteMedSamPredictor

            self._predictor = LiteMedSamPredictor(self.device)
        return self._predictor

    @property
    def model_id(self) -> str:
        return f"medsam-{self.predictor.model_id}-{self.pooling}"

    def shared_model(self, family: str):
        return self.predictor if family == "litemedsam" else None

    def _embed_batch(self, images):
        out = []
        for image in images:
            emb = self.predictor.embedding(image)
            out.append(pool(emb.features, emb.scaled, self.pooling))
        return np.stack(out)
