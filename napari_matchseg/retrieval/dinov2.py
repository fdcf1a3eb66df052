"""DINOv2 CLS embeddings through torch.hub ``facebookresearch/dinov2``.

The retriever of the retrieval-augmented SAM 2 paper.

The model *code* comes from torch.hub; the *weights* always come through :mod:`napari_matchseg.weights`
(cache, verification, local files), loaded with ``torch.load(weights_only=True)``. Offline, the code is
taken from (in order) ``hub_dir``, ``$MATCHSEG_DINOV2_HUB``, or torch.hub's cache
(``<torch hub dir>/facebookresearch_dinov2_main``), and never fetched again once there.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import weights
from .._compat import avoid_triton_llvm_clash
from ..device import resolve_device
from ..errors import WeightsError
from ..tensors import file_fingerprint, run_encoder, to_batch
from .base import Retriever

ARCHS = ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14")
HUB_REPO = "facebookresearch/dinov2"
HUB_ENV = "MATCHSEG_DINOV2_HUB"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def hub_code_dir() -> Path:
    """Where torch.hub keeps (or will keep) the DINOv2 code."""
    return Path(torch.hub.get_dir()) / "facebookresearch_dinov2_main"


class Dinov2Retriever(Retriever):
    """DINOv2 backbone; ``arch`` one of :data:`ARCHS` (ViT-S/14 default). Loads on first use."""

    name = "dinov2"
    batch_size = 8

    def __init__(self, arch: str = "dinov2_vits14", hub_dir: str | Path | None = None,
                 checkpoint: str | Path | None = None, device: str | None = "auto", image_size: int = 224):
        if image_size % 14:
            raise ValueError(f"image_size must be a multiple of 14 (the patch size), got {image_size}")
        self.arch, self.image_size = arch, image_size
        self.hub_dir = Path(hub_dir) if hub_dir else (Path(os.environ[HUB_ENV]) if os.environ.get(HUB_ENV) else None)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.device = resolve_device(device)
        self._model = None

    @property
    def model_id(self) -> str:
        src = f"file-{file_fingerprint(self.checkpoint)}" if self.checkpoint else "lvd142m"
        return f"dinov2-{self.arch}-{src}-{self.image_size}"

    def _build(self) -> torch.nn.Module:
        kwargs = dict(pretrained=False)
        for local in (self.hub_dir, hub_code_dir()):
            if local is not None and (local / "hubconf.py").is_file():
                return torch.hub.load(str(local), self.arch, source="local", **kwargs)
        if self.hub_dir is not None:
            raise WeightsError(f"{self.hub_dir} is not a DINOv2 code folder (no hubconf.py in it)")
        if weights.is_offline():
            raise WeightsError(f"the DINOv2 code is not on this machine and {weights.OFFLINE_ENV} is set. "
                               f"Copy github.com/{HUB_REPO} to {hub_code_dir()} (or set ${HUB_ENV} to its folder)")
        try:  # fetched once into torch.hub's cache; later loads use the local copy above
            return torch.hub.load(HUB_REPO, self.arch, source="github", trust_repo=True,
                                  skip_validation=True, **kwargs)
        except Exception as exc:
            raise WeightsError(f"cannot fetch the DINOv2 code from github.com/{HUB_REPO} ({exc}). Copy it to "
                               f"{hub_code_dir()} or set ${HUB_ENV}") from exc

    def load(self) -> torch.nn.Module:
        if self._model is not None:
            return self._model
        avoid_triton_llvm_clash()
        if self.arch not in ARCHS:
            raise WeightsError(f"unknown DINOv2 model {self.arch!r}; choose one of {', '.join(ARCHS)}")
        try:
            model = self._build()
        except WeightsError:
            raise
        except Exception as exc:
            raise WeightsError(f"cannot build {self.arch} from the DINOv2 code: {exc}") from exc
        path = weights.fetch(self.arch, path=self.checkpoint)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise weights.unreadable(path, f"DINOv2 {self.arch}", exc) from exc
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{path} does not fit {self.arch}: {str(exc)[:300]}. Is it the weights "
                               "file of another model?") from exc
        self._model = model.eval().to(self.device)
        return self._model

    def _embed_batch(self, images):
        model = self.load()
        x = to_batch(images, self.image_size, _IMAGENET_MEAN, _IMAGENET_STD, self.device)
        return run_encoder(model, x)
