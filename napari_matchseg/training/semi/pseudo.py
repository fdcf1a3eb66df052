"""Pseudo-labels of a round: predicted (and optionally refined) for each unlabelled image, scored, selected."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ...bank import ReferenceBank
from ...errors import Cancelled, InputError, WeightsError, name_list
from ...metrics import dice as agreement
from ...proposers.matchseg import MatchSegPredictor
from ...pseudo_labels import PseudoLabelStore, confident_pseudo_label, refined_pseudo_label
from ...tensors import mask_to_working
from .config import SELECT_SCORES, SemiConfig


class SamRefiner:
    """Builds the configured refiner (``cfg.refine``) once, on first use; without its weights, says so once and
    returns None. A LiteMedSAM refiner keeps its image embeddings under ``features_dir`` (the run folder, or a folder
    shared between runs: the files are named by image content), so later rounds, a resumed run and other runs on
    the same images do not encode them again."""

    def __init__(self, cfg: SemiConfig, log, refiner=None, features_dir=None):
        self.cfg, self.log, self.refiner, self.tried = cfg, log, refiner, False
        self.features_dir = features_dir

    def get(self):
        if self.cfg.refine == "none":
            return None
        if not self.tried:
            self.tried = True
            if self.refiner is None:
                self.refiner = self._build()
            predictor = getattr(self.refiner, "predictor", None)
            if self.features_dir is not None and hasattr(predictor, "attach_cache"):
                from ...feature_cache import FeatureCache

                predictor.attach_cache(FeatureCache(self.features_dir, predictor.model_id))
        return self.refiner

    def _build(self):
        from ...refiners import REFINERS

        entry = REFINERS.get(self.cfg.refine)
        options = {"model_name": self.cfg.sam2_model, "checkpoint": self.cfg.sam2_checkpoint,
                   "image_size": self.cfg.sam2_image_size} if self.cfg.refine == "sam2" else {}
        try:
            return entry.build(options, device=self.cfg.device)
        except WeightsError as exc:
            self.log(f"{entry.label} refinement unavailable ({exc}); the confident predictions are the "
                     "pseudo-labels")
            return None


def pseudo_label_round(predictor: MatchSegPredictor, bank: ReferenceBank, bank_ids: list[str],
                       items: Sequence[tuple[str, np.ndarray, str, str]], support_nn: np.ndarray,
                       store: PseudoLabelStore,
                       cfg: SemiConfig, refiner: SamRefiner, round_: int, checkpoint: str,
                       progress: Callable[[int], None], cancel: Callable[[], bool] | None) -> None:
    """Pseudo-label the images ``store`` lacks (weak view = the image and its mirror, averaged)."""
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def support(i):
        if i not in cache:
            cache[i] = (bank.load_image(i), bank.load_mask(i))
        return cache[i]

    for n, (name, image, source, sha) in enumerate(items):
        if cancel is not None and cancel():
            raise Cancelled(f"pseudo-labelling cancelled ({len(store)} of {len(items)} done); "
                            "run the same command again to resume")
        if name not in store:
            sup_ids = [bank_ids[j] for j in support_nn[n][:cfg.k]]
            sup = [support(i) for i in sup_ids]
            s_img, s_msk = [s[0] for s in sup], [s[1] for s in sup]
            [(p, p_m)] = predictor.predict_with_mirror([image], [(s_img, s_msk)])
            prob = 0.5 * (p + p_m)
            sam = refiner.get()
            if sam is not None:
                mask, conf, method, note = refined_pseudo_label(sam, image, prob, cfg.confidence,
                                                                cfg.refine_threshold, cfg.refine_margin)
            else:
                (mask, conf), method, note = confident_pseudo_label(prob, cfg.confidence), "confident", ""
            unrefined = None if method == "confident" else prob >= 0.5  # kept: what refinement changed
            store.add(name, mask, conf, unrefined=unrefined, reliability=round(agreement(p >= 0.5, p_m >= 0.5), 5),
                      foreground_confidence=round(foreground_confidence(prob), 5),
                      source=source, image_sha256=sha, round=round_,
                      method=method, note=note, checkpoint=checkpoint, supports=sup_ids)
        progress(n + 1)


def foreground_confidence(prob: np.ndarray) -> float:
    """Mean ``max(p, 1 - p)`` over the pixels predicted foreground (over all pixels when there are none): how
    sure the model is of the object it found, which the background's many easy pixels would otherwise hide."""
    prob = np.asarray(prob, np.float32)
    fg = prob >= 0.5
    return float(np.maximum(prob, 1 - prob)[fg if fg.any() else slice(None)].mean())


def select_reliable(store: PseudoLabelStore, names: list[str], keep_fraction: float,
                    by: str = "agreement") -> list[int]:
    """Rows of ``names`` whose pseudo-labels are the most reliable ``keep_fraction`` (ST++-style selection), by
    ``by``: "agreement" (Dice between the weak views' masks) or "confidence" (:func:`foreground_confidence`)."""
    recs = {r["name"]: r for r in store.records()}
    field = SELECT_SCORES[by]
    missing = [n for n in names if field not in recs[n]]
    if missing:
        raise InputError(f"pseudo-labels in {store.folder} have no {field!r} score ({name_list(missing)}); they "
                         "were made before it existed: use select 'agreement'")
    score = np.array([recs[n][field] for n in names])
    n_keep = max(1, int(round(keep_fraction * len(names))))
    return sorted(np.argsort(-score, kind="stable")[:n_keep].tolist())


def load_pseudo(store: PseudoLabelStore, names: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    masks, confs = [], []
    for name in names:
        m, c = store.load(name)
        masks.append(mask_to_working(m, size).to(torch.uint8))
        confs.append(mask_to_working(c, size).to(torch.uint8))
    return torch.stack(masks), torch.stack(confs)


def round_stats(store: PseudoLabelStore) -> dict:
    recs = store.records()
    return {"images": len(recs), "refined": sum(r["method"] != "confident" for r in recs),
            "mean_confident_fraction": round(float(np.mean([r["confident_fraction"] for r in recs])), 4),
            "mean_foreground_fraction": round(float(np.mean([r["foreground_fraction"] for r in recs])), 4),
            "selected": len(json.loads((store.folder / "selected.json").read_text()))}
