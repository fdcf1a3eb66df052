"""The ``sam2`` proposer: retrieved references become SAM 2 conditioning memories, the query is the next frame.

Following *Retrieval-augmented few-shot medical image segmentation with foundation models* (Zhao et al.),
each reference image and its mask is encoded as a SAM 2 memory exactly as a video frame with a mask prompt
would be (``SAM2Base.track_step`` with ``mask_inputs``), and the query is segmented by ``track_step`` as frame
k with every reference in ``output_dict["cond_frame_outputs"]``: the installed sam2's own state layout, built
from arrays (no JPEG folder, no video predictor state). The most similar reference is placed next to the
query in time. A reference memory (its ``maskmem_features`` and ``obj_ptr``) depends only on the image, the
mask and the model, so it is computed once and cached in memory and in the bank.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import weights
from ..device import half_dtype, resolve_device
from ..errors import InputError
from ..feature_cache import TieredCache
from ..image_io import check_image, check_mask, content_hash
from ..sam2_model import DEFAULT_SAM2, build_sam2_model
from ..tensors import autocast, file_fingerprint, to_batch
from .base import Proposer

_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MAX_K = 32


class Sam2MemoryProposer(Proposer):
    """SAM 2's memory attention as a proposer. ``model``: an already built SAM 2 (from
    :func:`~napari_matchseg.sam2_model.build_sam2_model`) to use instead of loading one, e.g. one shared with
    the SAM-Match refiner or a small random one in tests."""

    name = "sam2"

    def __init__(self, model_name: str = DEFAULT_SAM2, checkpoint: str | Path | None = None,
                 device: str | None = "auto", image_size: int = 1024, memory_cache: int = 256,
                 model: torch.nn.Module | None = None):
        self.device = resolve_device(device)
        self.model = model if model is not None else build_sam2_model(model_name, checkpoint, self.device,
                                                                      image_size)
        self.size = int(self.model.image_size)
        src = checkpoint if checkpoint is not None else (weights.where(model_name) if model is None else None)
        tag = file_fingerprint(src) if src is not None and Path(src).is_file() else "random"
        self.model_id = f"sam2-{model_name}-{tag}-{self.size}"
        self.autocast = half_dtype(self.device) if self.device.type == "cuda" else None
        self.features = TieredCache(memory_cache)
        self._mem_pos: torch.Tensor | None = None
        self.feature_shapes: list[tuple[int, ...]] = []
        self.reference_encodings = 0  # how many memories were computed (not loaded): for tests and benchmarks

    def attach_cache(self, store) -> None:
        if not self.feature_shapes:
            g = self.size // 16
            self.feature_shapes = [(int(self.model.mem_dim), g, g), (int(self.model.hidden_dim),)]
        store.bind(self.feature_shapes)
        self.features.store = store

    def shared_model(self, family: str):
        return self.model if family == "sam2" else None

    def _ctx(self):
        return autocast(self.device, self.autocast)

    def _backbone(self, image: np.ndarray):
        x = to_batch([image], self.size, _MEAN, _STD, self.device)
        out = self.model.forward_image(x)
        _, feats, pos, sizes = self.model._prepare_backbone_features(out)
        return feats, pos, sizes

    def _mask_input(self, mask: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(mask.astype(np.float32))[None, None].to(self.device)
        return (F.interpolate(t, size=(self.size, self.size), mode="bilinear", align_corners=False) >= 0.5).float()

    def reference_memory(self, image: np.ndarray, mask: np.ndarray) -> list[torch.Tensor]:
        """[maskmem_features (C_mem, h, w), obj_ptr (C,)] for one reference, cached by image and mask."""
        img = check_image(image, name="reference image")
        m = check_mask(mask, img.shape, name="reference mask")

        def compute():
            with torch.inference_mode(), self._ctx():
                feats, pos, sizes = self._backbone(img)
                out = self.model.track_step(
                    frame_idx=0, is_init_cond_frame=True, current_vision_feats=feats,
                    current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=None,
                    mask_inputs=self._mask_input(m), output_dict={"cond_frame_outputs": {},
                                                                   "non_cond_frame_outputs": {}},
                    num_frames=1, run_mem_encoder=True)
            self.reference_encodings += 1
            return [out["maskmem_features"][0].float().cpu(), out["obj_ptr"][0].float().cpu()]

        return self.features.get_or_compute(f"{content_hash(img)}-{content_hash(m)[:16]}", compute)

    def _memory_pos(self, feats: torch.Tensor) -> torch.Tensor:
        if self._mem_pos is None or self._mem_pos.shape[-2:] != feats.shape[-2:]:
            self._mem_pos = self.model.memory_encoder.position_encoding(feats).to(feats.dtype)
        return self._mem_pos

    def predict_batch(self, images, supports, prompts=None) -> list[np.ndarray]:
        self._refuse_prompts(prompts)
        return [self._predict_one(im, *s) for im, s in zip(images, supports)]

    def _predict_one(self, image: np.ndarray, support_images: Sequence[np.ndarray],
                     support_masks: Sequence[np.ndarray]) -> np.ndarray:
        """Foreground probability (H, W) float32; supports best first."""
        img = check_image(image, name="query")
        if len(support_images) != len(support_masks):
            raise InputError(f"{len(support_images)} support images but {len(support_masks)} support masks")
        k = len(support_images)
        if not 1 <= k <= MAX_K:
            raise InputError(f"the SAM 2 proposer needs between 1 and {MAX_K} references, got {k}")
        mems = [self.reference_memory(si, sm) for si, sm in zip(support_images, support_masks)]
        with torch.inference_mode(), self._ctx():
            cond = {}
            for i, (maskmem, ptr) in enumerate(mems):  # best match at t = k - 1, right before the query
                f = maskmem[None].to(self.device)
                cond[k - 1 - i] = {"maskmem_features": f, "maskmem_pos_enc": [self._memory_pos(f)],
                                   "obj_ptr": ptr[None].to(self.device)}
            feats, pos, sizes = self._backbone(img)
            out = self.model.track_step(
                frame_idx=k, is_init_cond_frame=False, current_vision_feats=feats, current_vision_pos_embeds=pos,
                feat_sizes=sizes, point_inputs=None, mask_inputs=None,
                output_dict={"cond_frame_outputs": cond, "non_cond_frame_outputs": {}},
                num_frames=k + 1, run_mem_encoder=False)
            logits = out["pred_masks"].float()
        h, w = img.shape[:2]
        up = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return torch.sigmoid(up)[0, 0].cpu().numpy().astype(np.float32)
