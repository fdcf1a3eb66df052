"""CLIP image embeddings through open_clip_torch (the MatchSeg paper's support selector)."""

from __future__ import annotations

from pathlib import Path

from .. import weights
from .._compat import avoid_triton_llvm_clash
from ..device import resolve_device
from ..errors import WeightsError
from ..tensors import file_fingerprint, run_encoder, to_batch
from .base import Retriever

# open_clip (model, pretrained tag) -> our weights registry, so the file is cached and verified once
_KNOWN = {("ViT-B-32", "laion2b_s34b_b79k"): "clip-vit-b-32-laion2b",
          ("ViT-B-16", "laion2b_s34b_b88k"): "clip-vit-b-16-laion2b"}
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipRetriever(Retriever):
    """open_clip image tower. The model loads on first use, so constructing one is free.

    Args:
        model_name: an open_clip architecture (``ViT-B-32``) or the stem of ``model_config``.
        pretrained: an open_clip pretrained tag; ignored when ``checkpoint`` is given.
        checkpoint: a local weights file (any open_clip checkpoint); never downloaded.
        model_config: a JSON model config to register with open_clip (custom architectures).
        device: ``"auto"`` (CUDA, then MPS, then CPU) or an explicit device.
    """

    name = "clip"

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str | None = "laion2b_s34b_b79k",
                 checkpoint: str | Path | None = None, model_config: str | Path | None = None,
                 device: str | None = "auto"):
        self.model_name, self.pretrained = model_name, pretrained
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.model_config = Path(model_config) if model_config else None
        self.device = resolve_device(device)
        self._model = None

    @property
    def model_id(self) -> str:
        src = f"file-{file_fingerprint(self.checkpoint)}" if self.checkpoint else self.pretrained
        return f"clip-{self.model_name}-{src}"

    def _weights_path(self) -> str | None:
        if self.checkpoint is not None:
            return str(weights.fetch(None, path=self.checkpoint))
        key = (self.model_name, self.pretrained)
        if key in _KNOWN:
            return str(weights.fetch(_KNOWN[key]))
        return None

    def load(self):
        if self._model is not None:
            return self._model
        avoid_triton_llvm_clash()
        import open_clip

        if self.model_config is not None:
            if not self.model_config.is_file():
                raise WeightsError(f"open_clip model config {self.model_config} does not exist")
            open_clip.add_model_config(self.model_config)
        path = self._weights_path()
        pretrained = path
        if path is None and self.pretrained:
            if weights.is_offline():
                raise WeightsError(f"open_clip {self.model_name}/{self.pretrained} is not in the weights "
                                   f"registry and {weights.OFFLINE_ENV} is set; download it elsewhere and "
                                   "pass it with checkpoint=PATH (--clip-checkpoint)")
            pretrained = self.pretrained  # open_clip downloads it into our cache folder
        try:
            model = open_clip.create_model(self.model_name, pretrained=pretrained, device=self.device,
                                           cache_dir=str(weights.cache_dir() / "open_clip"),
                                           weights_only=True)
        except RuntimeError as exc:
            if "not found" in str(exc).lower() and "model" in str(exc).lower() and path is None:
                raise WeightsError(f"open_clip has no model {self.model_name!r}: {exc}") from exc
            raise weights.unreadable(pretrained, f"CLIP {self.model_name}", exc) from exc
        except Exception as exc:  # unpickling errors, truncated files, wrong keys
            raise weights.unreadable(pretrained, f"CLIP {self.model_name}", exc) from exc
        model.eval()
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        self._mean = tuple(cfg.get("mean", _OPENAI_MEAN))
        self._std = tuple(cfg.get("std", _OPENAI_STD))
        size = model.visual.image_size
        self._size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self._model = model
        return model

    def _embed_batch(self, images):
        model = self.load()
        x = to_batch(images, self._size, self._mean, self._std, self.device)
        return run_encoder(model.encode_image, x)
