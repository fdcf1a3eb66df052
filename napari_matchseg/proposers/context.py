"""The ``context`` proposer: LiteMedSAM's pretrained features read the references, its decoder draws the mask.

No training: the references' cached embeddings and masks give a foreground map of the query
(:mod:`napari_matchseg.in_context`); each connected part of the map becomes one box for LiteMedSAM's decoder (many
small objects stay many objects), and a decoded part is kept only where the decoder's IoU estimate and the map
agree with it, otherwise the map's own part stays. The user's boxes and clicks go through the same decoder, with
or without references (``-k 0``: prompts alone).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from ..image_io import check_image, check_mask, content_hash
from ..in_context import METHODS, References, build_scorers, map_to_image, score_query
from ..in_context_head import Memory, head_map, load_context_head
from ..metrics import dice
from .litemedsam import OnLiteMedSam

DECODERS = ("none", "box", "box+mask")
OBJECTS = ("references", "all")
OBJECT_PIXELS = 4  # a reference's object counts from this size (nuclei of a 96 x 96 image are a few pixels)
CLICK_BOX_SIZES = (0.1, 0.2, 0.35, 0.5)  # of the image's longer side: the boxes tried around a lone click
CLICK_WEIGHT = 64  # a clicked cell of the image counts as this many reference cells
MANY_OBJECTS = 3  # references with a median of this many objects or more (nuclei, cells): every part is kept
HEAD = "head"  # the method that maps the query with a trained head (in_context_head) instead of fitted scorers


@dataclasses.dataclass
class Part:
    """One object of a proposal: its box (None: points only), its probability and whether the decoder drew it."""

    box: list[float] | None
    prob: np.ndarray  # (H, W)
    region: np.ndarray  # (H, W) bool: the map's pixels this part replaces
    decoded: bool
    iou: float | None = None
    clicks: list = dataclasses.field(default_factory=list)  # the user's clicks on this object, in order


class ContextProposer(OnLiteMedSam):
    name = "context"
    min_k = 0

    def __init__(self, device: str | None = "auto", model=None, method: str = "mean", decoder: str = "box",
                 min_agreement: float = 0.8, min_iou: float = 0.5, max_objects: int = 8, min_pixels: int = 16,
                 objects: str = "references", clicks: str = "map", head: str | None = None):
        """``model``: a LiteMedSamPredictor to share (else one is built); ``method``: how the references score the
        query's cells (in_context.METHODS); ``decoder``: 'none' keeps the map, 'box' decodes a box per part,
        'box+mask' adds the map as the decoder's mask input; a decoded part must agree with the map's part at Dice
        >= ``min_agreement`` and have an IoU estimate >= ``min_iou``; ``objects``: 'references' keeps as many
        parts of the map as the references show objects (and any part at least half as strong as the strongest;
        every part when they show many), 'all' keeps every part. The ``max_objects`` largest parts are decoded, the
        others stay as the map draws them (many small objects: the map does as well, in a fraction of the time).
        ``clicks`` (with references): 'map' lets the clicked cells of the image join the references' cells (the
        map learns from them), 'decoder' re-draws the clicked object with LiteMedSAM's decoder; without references
        clicks always go through the decoder. ``method`` 'head' maps the query with the trained head at ``head``
        (a file written by ``training.context_head.save_head``); clicks then go through the decoder."""
        if method not in (*METHODS, HEAD):
            raise InputError(f"--context-method must be one of {', '.join((*METHODS, HEAD))}, not {method!r}")
        if method == HEAD and not head:
            raise InputError("--context-method head needs --context-head PATH (trained by "
                             "benchmarks/train_context_head.py; no head is shipped)")
        if objects not in OBJECTS:
            raise InputError(f"--context-objects must be one of {', '.join(OBJECTS)}, not {objects!r}")
        if clicks not in ("map", "decoder"):
            raise InputError(f"clicks must be 'map' or 'decoder', not {clicks!r}")
        if decoder not in DECODERS:
            raise InputError(f"--context-decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
        super().__init__(device, model)
        self.method, self.decoder, self.objects = method, decoder, objects
        self.min_agreement, self.min_iou = min_agreement, min_iou
        self.max_objects, self.min_pixels = max_objects, min_pixels
        self._scorers: OrderedDict[tuple, tuple[list, int, list[References]]] = OrderedDict()
        self._cells: OrderedDict[str, tuple[References, int]] = OrderedDict()
        self.click_mode = "decoder" if method == HEAD else clicks
        self.head = load_context_head(head) if method == HEAD else None
        self._memories: OrderedDict[str, tuple[Memory, int]] = OrderedDict()

    def prepare_references(self, bank, progress=None) -> None:
        ids = bank.ids()
        for i, ref_id in enumerate(ids):
            self.predictor.embedding(bank.load_image(ref_id))
            if progress is not None:
                progress(i + 1, len(ids))

    # -- proposals --
    def predict_batch(self, images, supports, prompts=None):
        prompts = prompts or [None] * len(images)
        return [self.predict_with_quality(img, *s, prompts=p)[0] for img, s, p in zip(images, supports, prompts)]

    def predict_with_quality(self, image, support_images=(), support_masks=(), prompts=None):
        """(probability, the mean IoU estimate of the decoded parts, or None when the map stands alone)."""
        parts, base = self.parts(image, support_images, support_masks, prompts)
        prob = compose(base, parts)
        ious = [p.iou for p in parts if p.decoded and p.iou is not None]
        return prob, (float(np.mean(ious)) if ious else None)

    def _reference_map(self, emb, support_images, support_masks, points=()) -> tuple[np.ndarray, int | None]:
        """(the map of the image embedded as ``emb``, how many objects the references show: None without
        references). ``points``: the user's clicks on this image, which label its own cells beside the
        references' (the map learns from them)."""
        if len(support_images) != len(support_masks):
            raise InputError(f"{len(support_images)} reference images but {len(support_masks)} masks")
        if not len(support_images):
            return np.zeros(emb.size, np.float32), None
        if self.head is not None:
            return self._head_map(emb, support_images, support_masks)
        scorers, objects, cells = self._fitted(support_images, support_masks)
        if points and scorers:
            clicked = References.clicked(emb.features.cpu(), emb.scaled, emb.size, points, CLICK_WEIGHT)
            scorers = build_scorers(References.concat([*cells, clicked]), self.method)
        if not scorers:  # references without any foreground: nothing to find
            return np.zeros(emb.size, np.float32), 0
        return map_to_image(score_query(emb.features.cpu(), emb.scaled, scorers), emb.scaled, emb.size), objects

    def _fitted(self, images, masks) -> tuple[list, int, list[References]]:
        """(the scorers, the references' median number of objects, each reference's cells) for this set of
        references (fitted once per set, kept for the last few sets; each reference's cells are kept too, for the
        next set it is part of)."""
        checked = [check_image(im, name=f"reference image {i}") for i, im in enumerate(images)]
        ms = [check_mask(m, im.shape, name=f"reference mask {i}") for i, (im, m) in enumerate(zip(checked, masks))]
        keys = [content_hash(im) + content_hash(m) for im, m in zip(checked, ms)]
        key = (self.method, *keys)
        if key not in self._scorers:
            refs = [self._reference(k, im, m) for k, im, m in zip(keys, checked, ms)]
            cells = [r for r, _ in refs]  # the cached objects themselves: no copy
            scorers = build_scorers(References.concat(cells), self.method)
            self._scorers[key] = (scorers, int(np.ceil(np.median([n for _, n in refs]))), cells)
            while len(self._scorers) > 8:
                self._scorers.popitem(last=False)
        self._scorers.move_to_end(key)
        return self._scorers[key]

    def _head_map(self, emb, images, masks) -> tuple[np.ndarray, int]:
        """(the trained head's map of the image embedded as ``emb``, the references' median number of objects)."""
        checked = [check_image(im, name=f"reference image {i}") for i, im in enumerate(images)]
        memories = []
        for i, (im, m) in enumerate(zip(checked, masks)):
            m = check_mask(m, im.shape, name=f"reference mask {i}")
            key = content_hash(im) + content_hash(m)
            if key not in self._memories:
                ref = self.predictor.embedding(im)
                self._memories[key] = (Memory(self.head, ref.features.cpu(), ref.scaled, m),
                                       count_objects(m, OBJECT_PIXELS))
                while len(self._memories) > 256:
                    self._memories.popitem(last=False)
            self._memories.move_to_end(key)
            memories.append(self._memories[key])
        if not any(m.any() for m in masks):
            return np.zeros(emb.size, np.float32), 0
        cmap = head_map(self.head, emb.features.cpu(), emb.scaled, [m for m, _ in memories])
        objects = int(np.ceil(np.median([n for _, n in memories])))
        return map_to_image(cmap, emb.scaled, emb.size), objects

    def _reference(self, key: str, image: np.ndarray, mask: np.ndarray) -> tuple[References, int]:
        """One reference's cells and number of objects (kept for the last 256 references)."""
        if key not in self._cells:
            emb = self.predictor.embedding(image)
            cells = References.of(emb.features.cpu(), emb.scaled, mask)
            self._cells[key] = (cells, count_objects(mask, OBJECT_PIXELS))
            while len(self._cells) > 256:
                self._cells.popitem(last=False)
        self._cells.move_to_end(key)
        return self._cells[key]

    def parts(self, image, support_images=(), support_masks=(), prompts=None) -> tuple[list[Part], np.ndarray]:
        """(the proposal's objects, the map behind them) for the references and the user's ``prompts``."""
        img = check_image(image)
        p = prompts or {}
        boxes, points = list(p.get("boxes") or []), [list(q) for q in (p.get("points") or [])]
        if not len(support_images) and not (boxes or points):
            raise InputError("the context proposer needs references (a bank) or prompts (a box or clicks)")
        learn = bool(points) and len(support_images) > 0 and self.click_mode == "map" and not boxes
        emb = self.predictor.embedding(img)
        base, objects = self._reference_map(emb, support_images, support_masks, points if learn else ())
        if boxes:  # the user's boxes say what the objects are; clicks correct the box they fall in
            return self._decode(emb, [(b, [q for q in points if _inside(q, b)]) for b in boxes], base), base
        if self.objects == "references" and objects is not None and objects < MANY_OBJECTS:
            base = keep_likely_parts(base, objects, points)
        parts = self._map_parts(emb, base)
        if learn:  # the map already learnt from the clicks: only a positive click it still misses starts an object
            for q in points:
                if q[2] == 1 and not any(p.prob[_pixel(q, base.shape)] >= 0.5 for p in parts):
                    parts.append(self._new_object(emb, base, q))
            honour_clicks(parts, points)
        elif points:
            parts = self._apply_clicks(emb, base, parts, points)
        return parts, base

    def _map_parts(self, emb, base: np.ndarray) -> list[Part]:
        labels, n = ndi.label(base >= 0.5)
        if not n:
            return []
        sizes = ndi.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
        order = [i + 1 for i in np.argsort(-sizes) if sizes[i] >= self.min_pixels]
        if not order:
            return []
        order = order[:self.max_objects]
        slices = ndi.find_objects(labels)
        regions = [labels == i for i in order]
        boxes = [_box(slices[i - 1], base.shape) for i in order]
        decoded = self._decode(emb, [(b, []) for b in boxes], base) if self.decoder != "none" else [None] * len(order)
        parts = []
        for box, region, part in zip(boxes, regions, decoded):
            if part is not None and dice(part.prob >= 0.5, region) >= self.min_agreement \
                    and (part.iou or 0.0) >= self.min_iou:
                part.region = region
                parts.append(part)
            else:  # the decoder disagrees with the references: the map's own part stays
                parts.append(Part(box, np.where(region, base, 0.0).astype(np.float32), region, False))
        return parts

    def _decode(self, emb, objects: list[tuple[list[float] | None, list]], base: np.ndarray) -> list[Part]:
        """A part per object, in order: one decoder batch for those with a box, a call each for clicks alone."""
        mask_input = base if self.decoder == "box+mask" and base.any() else None
        parts: list[Part | None] = [None] * len(objects)
        boxed = [i for i, (b, _) in enumerate(objects) if b is not None]
        if boxed:
            probs, ious = self.predictor.predict_each(
                emb, np.asarray([objects[i][0] for i in boxed], float),
                [np.asarray(objects[i][1], float).reshape(-1, 3) for i in boxed], mask_input)
            for i, prob, iou in zip(boxed, probs, ious):
                parts[i] = Part(objects[i][0], _within(prob, objects[i][0]), np.zeros(prob.shape, bool), True,
                                float(iou))
        for i, (b, pts) in enumerate(objects):
            if b is None:
                probs, ious = self.predictor.predict_each(emb, None, [np.asarray(pts, float).reshape(-1, 3)], None)
                parts[i] = Part(None, probs[0], np.zeros(probs[0].shape, bool), True, float(ious[0]))
        return parts  # type: ignore[return-value]

    def _apply_clicks(self, emb, base: np.ndarray, parts: list[Part], points: list) -> list[Part]:
        """The clicks in the order given, each on the proposal as the earlier ones left it: a click inside an
        object's box re-draws that object with all its clicks (the smallest box it falls in); a positive click
        outside every object starts one; a negative one there has nothing to remove.

        Clicks do what they say: a positive click only adds to its object and a negative one only removes, and the
        pixels under every click end up on the side the click asked for."""
        parts = list(parts)
        for q in points:
            boxes = [p.box if p.box is not None else _bbox(p.prob >= 0.5) for p in parts]
            hits = [i for i, b in enumerate(boxes) if b is not None and _inside(q, b)]
            if hits:
                i = min(hits, key=lambda j: _area(boxes[j]))
                old = parts[i]
                part = self._decode(emb, [(boxes[i], old.clicks + [q])], base)[0]
                (np.maximum if q[2] == 1 else np.minimum)(part.prob, old.prob, out=part.prob)
                part.region, part.clicks = old.region | (old.prob >= 0.5), old.clicks + [q]
                parts[i] = part
            elif q[2] == 1:
                parts.append(self._new_object(emb, base, q))
        honour_clicks(parts, points)
        return parts

    def _new_object(self, emb, base: np.ndarray, q: list) -> Part:
        """An object from a positive click outside the proposal: the box of the map's part around it (at a lower
        threshold) when there is one, else the best of boxes of several sizes centred on the click (LiteMedSAM was
        trained with boxes; its IoU head chooses)."""
        labels, _ = ndi.label(base >= 0.25)
        lab = labels[_pixel(q, base.shape)]
        box = _bbox(labels == lab) if lab else None
        if box is not None and _area(box) <= 0.5 * base.size:
            candidates = [box]
        else:
            candidates = [_square(q, f * max(base.shape), base.shape) for f in CLICK_BOX_SIZES]
        tried = self._decode(emb, [(b, [q]) for b in candidates], base)
        best = max(tried, key=lambda p: p.iou if p.prob[_pixel(q, base.shape)] >= 0.5 else p.iou - 1.0)
        best.clicks = [q]
        return best

def honour_clicks(parts: list[Part], points: list) -> None:
    """A disk under each click (radius 1 % of the image's longer side, at least 2 px) on the side it asked for:
    foreground in the part it belongs to, background in every part."""
    if not parts:
        return
    shape = parts[0].prob.shape
    radius = max(2, int(round(0.01 * max(shape))))
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    for q in points:
        y, x = _pixel(q, shape)
        disk = (yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2
        if q[2] == 1:
            owner = next((p for p in parts if p.prob[y, x] >= 0.5), None)
            if owner is None:
                owner = min(parts, key=lambda p: np.inf if p.box is None or not _inside(q, p.box) else _area(p.box))
                owner.prob[disk] = np.maximum(owner.prob[disk], 1.0)
                owner.region |= disk
        else:
            for p in parts:
                p.prob[disk] = 0.0
                p.region |= disk


def count_objects(mask: np.ndarray, min_pixels: int) -> int:
    """The number of objects (connected parts of at least ``min_pixels``) in a reference's mask."""
    lab, n = ndi.label(mask)
    return int((np.bincount(lab.ravel())[1:] >= min_pixels).sum()) if n else 0


def keep_likely_parts(base: np.ndarray, objects: int, points=()) -> np.ndarray:
    """``base`` with only its ``objects`` strongest parts (by summed probability), those at least half as strong as
    the strongest, and those under a positive click; the other parts' pixels set to 0 (the references show fewer
    objects than the map has)."""
    labels, n = ndi.label(base >= 0.5)
    if n <= max(objects, 1):
        return base
    mass = ndi.sum_labels(base, labels, index=np.arange(1, n + 1))
    order = np.argsort(-mass)
    keep = set(order[:max(objects, 1)].tolist()) | {i for i in range(n) if mass[i] >= 0.5 * mass[order[0]]}
    keep |= {int(labels[_pixel(q, base.shape)]) - 1 for q in points if q[2] == 1 and labels[_pixel(q, base.shape)]}
    drop = np.isin(labels, [i + 1 for i in range(n) if i not in keep])
    out = base.copy()
    out[drop] = 0.0
    return out


def compose(base: np.ndarray, parts: list[Part]) -> np.ndarray:
    """The map with every part's region replaced by the part's probability (the decoder's, or the map's own)."""
    out = base.copy()
    for p in parts:
        out[p.region] = 0.0
    for p in parts:
        np.maximum(out, p.prob, out=out)
    return out


def _box(sl: tuple[slice, slice], shape: tuple[int, int], margin: float = 0.1) -> list[float]:
    """[x0, y0, x1, y1] (inclusive) of a part's slices, ``margin`` of its size (and 2 px) larger on each side."""
    y0, y1, x0, x1 = sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1
    dy, dx = margin * (y1 - y0 + 1) + 2, margin * (x1 - x0 + 1) + 2
    h, w = shape
    return [max(0.0, x0 - dx), max(0.0, y0 - dy), min(w - 1.0, x1 + dx), min(h - 1.0, y1 + dy)]


def _bbox(mask: np.ndarray) -> list[float] | None:
    sl = ndi.find_objects(mask.astype(np.int32))
    return _box(sl[0], mask.shape) if sl and sl[0] is not None else None


def _within(prob: np.ndarray, box: list[float]) -> np.ndarray:
    """``prob`` with everything outside ``box`` set to 0 (a part's decoder output may not leak elsewhere)."""
    out = np.zeros_like(prob)
    x0, y0, x1, y1 = (int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])), int(np.ceil(box[3])))
    out[y0:y1 + 1, x0:x1 + 1] = prob[y0:y1 + 1, x0:x1 + 1]
    return out


def _square(q, side: float, shape: tuple[int, int]) -> list[float]:
    """A box of ``side`` pixels centred on the click ``q``, clipped to the image."""
    h, w = shape
    r = side / 2
    return [max(0.0, q[0] - r), max(0.0, q[1] - r), min(w - 1.0, q[0] + r), min(h - 1.0, q[1] + r)]


def _pixel(q, shape: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of a click [x, y, label], clipped to the image."""
    return min(shape[0] - 1, max(0, int(round(q[1])))), min(shape[1] - 1, max(0, int(round(q[0]))))


def _inside(q, box) -> bool:
    return box[0] <= q[0] <= box[2] and box[1] <= q[1] <= box[3]


def _area(box) -> float:
    return (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
