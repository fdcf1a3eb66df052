"""MatchSegPredictor: probability maps for a query given support images and masks.

Support features depend only on the support image, so they are computed once per image and kept (in
memory, and on disk in the bank through :class:`~napari_matchseg.feature_cache.FeatureCache`): a proposal
then costs one encoder pass for the query, the joint attention and the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import DEFAULT_CHECKPOINT, build_matchseg
from ..device import half_dtype, resolve_device
from ..errors import InputError
from ..feature_cache import TieredCache
from ..image_io import check_image, check_mask, content_hash
from ..modeling import SupportFeatures
from ..tensors import autocast, file_fingerprint, mask_to_working, to_working
from .base import Proposer

MAX_K = 32


class MatchSegPredictor(Proposer):
    """Loads a checkpoint once (``None`` = the embedded default) and predicts on any device.

    ``half`` (default: automatic) runs the network under bf16/fp16 autocast on CUDA/MPS; CPU stays fp32.
    ``mirror_tta`` averages each query's probabilities with those of its left-right mirror image: one more
    query pass (the support features are shared), a steadier proposal (docs/benchmarks.md "Test-time mirror").
    """

    name = "matchseg"

    def __init__(self, checkpoint: str | Path | None = None, device: str | None = "auto",
                 half: bool | None = None, memory_cache: int = 512, mirror_tta: bool = False):
        self.device = resolve_device(device)
        self.model, self.metadata = build_matchseg(checkpoint)
        self.model.to(self.device)
        self.size = self.model.config.image_size
        path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
        self.model_id = f"matchseg-{file_fingerprint(path)}-{self.size}"
        self.autocast = half_dtype(self.device) if half is not False else None
        with torch.inference_mode():  # the shapes of one support's cached features
            probe = self.model.encode_supports(torch.zeros(1, 1, 3, self.size, self.size, device=self.device),
                                               torch.zeros(1, 1, 1, self.size, self.size, device=self.device))
        self.feature_shapes = [tuple(f.shape[2:]) for f in probe.feats]
        self.features = TieredCache(memory_cache)
        self.mirror_tta = mirror_tta

    def attach_cache(self, store) -> None:
        """Read and write support features through ``store`` (a FeatureCache) as well as memory."""
        store.bind(self.feature_shapes)
        self.features.store = store

    @property
    def uses_supports(self) -> bool:
        return self.model.uses_supports

    def _run(self, fn, *args):
        with torch.inference_mode(), autocast(self.device, self.autocast):
            return fn(*args)

    def prepare_references(self, bank, progress=None) -> None:
        ids = bank.ids()
        for i, ref_id in enumerate(ids):
            self.image_features(bank.load_image(ref_id))
            if progress is not None:
                progress(i + 1, len(ids))

    def image_features(self, image: np.ndarray) -> list[torch.Tensor]:
        """Coarse encoder features of one support image (cached by content hash)."""
        img = check_image(image)

        def compute():
            x = to_working(img, self.size)[None, None].to(self.device)
            dummy = torch.zeros(1, 1, 1, self.size, self.size, device=self.device)
            sf = self._run(self.model.encode_supports, x, dummy)
            return [f[0, 0].float().cpu() for f in sf.feats]

        return self.features.get_or_compute(content_hash(img), compute)

    def supports(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> SupportFeatures:
        """SupportFeatures (1, k, ...) for k image/mask pairs."""
        if len(images) != len(masks):
            raise InputError(f"{len(images)} support images but {len(masks)} support masks")
        if not 1 <= len(images) <= MAX_K:
            raise InputError(f"MatchSeg needs between 1 and {MAX_K} supports, got {len(images)}")
        feats, ms = [], []
        for i, (img, m) in enumerate(zip(images, masks)):
            img = check_image(img, name=f"support image {i}")
            m = check_mask(m, img.shape, name=f"support mask {i}")
            feats.append(self.image_features(img))
            ms.append(mask_to_working(m, self.size))
        m_all = torch.stack(ms)[None].to(self.device)  # (1, k, 1, S, S)
        out_f, out_m = [], []
        for i in range(len(feats[0])):
            f = torch.stack([fs[i] for fs in feats])[None].to(self.device)
            out_f.append(f)
            out_m.append(F.adaptive_avg_pool2d(m_all.flatten(0, 1), f.shape[-2:]).view(1, len(feats), 1,
                                                                                       *f.shape[-2:]))
        return SupportFeatures(out_f, out_m)

    def predict_batch(self, images: Sequence[np.ndarray],
                      supports: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
                      prompts=None) -> list[np.ndarray]:
        """Several queries at once; queries with the same number of supports share one forward pass."""
        self._refuse_prompts(prompts)
        if not self.mirror_tta:
            return self._predict_views(images, supports, mirror=False)[0]
        return [0.5 * (p + p_m) for p, p_m in self.predict_with_mirror(images, supports)]

    def predict_with_mirror(self, images: Sequence[np.ndarray],
                            supports: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]]
                            ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(p, p_mirror) per query: the probabilities of the image and of its mirror image, mirrored back.
        Their mean is the test-time-augmented proposal; their agreement says how reliable it is."""
        return list(zip(*self._predict_views(images, supports, mirror=True)))

    def _predict_views(self, images, supports, mirror: bool) -> list[list[np.ndarray]]:
        """One list of probability maps per view (the image; with ``mirror`` also its mirror image)."""
        if len(images) != len(supports):
            raise InputError(f"{len(images)} queries but {len(supports)} support sets")
        checked = [check_image(im, name=f"query {i}") for i, im in enumerate(images)]
        sfs = [self.supports(*s) if self.uses_supports else None for s in supports]
        out: list[list[np.ndarray | None]] = [[None] * len(checked) for _ in range(2 if mirror else 1)]
        groups: dict[int, list[int]] = {}
        for i, sf in enumerate(sfs):
            groups.setdefault(0 if sf is None else sf.feats[0].shape[1], []).append(i)
        for k, rows in groups.items():
            q = torch.stack([to_working(checked[i], self.size) for i in rows]).to(self.device)
            sf = None
            if k:
                parts = [sfs[i] for i in rows]  # join the queries' support sets along the batch axis
                sf = SupportFeatures([torch.cat(f) for f in zip(*(p.feats for p in parts))],
                                     [torch.cat(m) for m in zip(*(p.masks for p in parts))])
            if mirror:  # the mirrored queries ride in the same batch, with the same (cached) supports
                q = torch.cat([q, q.flip(-1)])
                if sf is not None:
                    sf = SupportFeatures([torch.cat([f, f]) for f in sf.feats], [torch.cat([m, m]) for m in sf.masks])
            logits = self._run(self.model.decode, q, sf).float()
            per_view = logits.split(len(rows)) if mirror else (logits,)
            for v, view_logits in enumerate(per_view):
                if v == 1:
                    view_logits = view_logits.flip(-1)  # back to the image's own orientation
                for j, i in enumerate(rows):
                    h, w = checked[i].shape[:2]
                    up = F.interpolate(view_logits[j:j + 1], size=(h, w), mode="bilinear", align_corners=False)
                    out[v][i] = up.sigmoid_()[0, 0].cpu().numpy()  # float32, no copy: large images stay cheap
        return out  # type: ignore[return-value]
