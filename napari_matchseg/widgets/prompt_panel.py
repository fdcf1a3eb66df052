"""The "Correct with clicks and boxes" box: prompts on the image, LiteMedSAM's mask at once (docs/plugin.md).

Two layers the plugin manages per image layer: ``<image> clicks`` (Points: a click on the image adds a point on
the object; Shift+click or a right click, a point that is not the object) and ``<image> box`` (Shapes, rectangle
mode). Any change to them re-segments the current slice with LiteMedSAM (:mod:`napari_matchseg.interactive`) into
``<image> proposal`` (with the in-context proposer chosen and a bank open: that proposer, from the references and
the prompts together); the first time a slice is seen its embedding is computed in a worker (about a second on a
CPU), then every change costs the decoder only. No bank is needed: the first references are made this way.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QGroupBox, QLabel, QVBoxLayout

from ..bank import ReferenceBank
from ..propose import Proposal
from ..proposers import PROPOSERS
from ._qt import button, row, shows_errors

POSITIVE, NEGATIVE = "#00ff66", "#ff3366"


class PromptPanel(QGroupBox):
    def __init__(self, ctx):
        super().__init__("Correct with clicks and boxes")
        self.ctx = ctx
        self._base: dict[tuple, np.ndarray | None] = {}  # (layer, slice) -> the proposal before any prompt
        self._dirty = self._clearing = False
        box = QVBoxLayout(self)
        box.addLayout(row(button("Clicks and boxes", self.start_prompts,
                                 "add the clicks and box layers for the current image and select the clicks"),
                          button("Clear prompts", self.clear_prompts, "remove this slice's clicks and boxes")))
        hint = QLabel("click: on the object; Shift+click or right click: not the object; draw a box in the "
                      "box layer (R). The proposal updates at once.")
        hint.setWordWrap(True)
        box.addWidget(hint)
        self.background_check = QCheckBox("Prepare images in the background")
        self.background_check.setToolTip("load LiteMedSAM when the dock opens and embed every image you look at, "
                                         "so that the first click on it does not wait for the encoder")
        self.background_check.setChecked(ctx.settings.background_embedding)
        self.background_check.toggled.connect(self._toggle_background)
        box.addWidget(self.background_check)
        self.background_status = QLabel("")
        self.background_status.setWordWrap(True)
        box.addWidget(self.background_status)

    def show_background_status(self, text: str) -> None:
        self.background_status.setText(text)

    def _toggle_background(self, on: bool) -> None:
        self.ctx.settings.background_embedding = bool(on)
        self.ctx.settings.save()
        if on:
            self.ctx.embed_shown()

    # ------------------------------------------------------------------ layers
    def prompt_layers(self, layer):
        """(clicks, box) layers of ``layer``, made on first use."""
        viewer, ndim = self.ctx.viewer, (np.asarray(layer.data).ndim - (1 if layer.rgb else 0))
        name = f"{layer.name} clicks"
        if name not in viewer.layers:
            pts = viewer.add_points(np.empty((0, ndim)), ndim=ndim, name=name, size=8, scale=layer.scale,
                                    features={"positive": np.zeros(0, bool)}, border_color="white")
            pts.mouse_drag_callbacks.append(self._on_click)
            pts.events.data.connect(self._on_prompts_changed)
        name_box = f"{layer.name} box"
        if name_box not in viewer.layers:
            shapes = viewer.add_shapes(ndim=ndim, name=name_box, edge_color="yellow", face_color="transparent",
                                       edge_width=2, scale=layer.scale)
            shapes.events.data.connect(self._on_prompts_changed)
        return viewer.layers[name], viewer.layers[name_box]

    @shows_errors
    def start_prompts(self) -> None:
        layer, _, _ = self.ctx.current_slice()
        clicks, _ = self.prompt_layers(layer)
        clicks.mode = "pan_zoom"  # clicks come from _on_click: a plain click adds, a drag still pans
        self.ctx.viewer.layers.selection.active = clicks

    def _on_click(self, layer, event):
        """A click without a drag adds a point (negative with Shift or the right button)."""
        start = tuple(event.position)
        yield
        moved = False
        while event.type == "mouse_move":
            moved = moved or np.hypot(*np.subtract(event.position, start)[-2:]) > 3
            yield
        if not moved:
            self.add_click(layer, start, positive=event.button != 2 and "Shift" not in event.modifiers)

    def add_click(self, clicks, position, positive: bool = True) -> None:
        """A point at ``position`` (world coordinates) on the object, or not on it."""
        coords = np.asarray(clicks.world_to_data(position), float)
        clicks.selected_data = set()  # napari paints the selected points with the current colour: none, so the
        clicks.feature_defaults["positive"] = positive  # earlier clicks keep theirs
        clicks.current_face_color = POSITIVE if positive else NEGATIVE
        clicks.add(coords[None])

    def _on_prompts_changed(self, event) -> None:
        if self._clearing or getattr(event, "action", None) in ("adding", "removing", "changing"):
            return  # napari announces a change before making it: act on the change itself
        self.update_from_prompts()

    @shows_errors
    def clear_prompts(self) -> None:
        """Remove this slice's clicks and boxes; its mask stays as it is."""
        layer, idx, _ = self.ctx.current_slice()
        clicks, boxes = self.prompt_layers(layer)
        self._clearing = True
        try:
            clicks.selected_data = {i for i, c in enumerate(clicks.data) if idx is None or int(round(c[0])) == idx}
            clicks.remove_selected()
            boxes.selected_data = {i for i, d in enumerate(boxes.data) if idx is None or int(round(d[0, 0])) == idx}
            boxes.remove_selected()
        finally:
            self._clearing = False
        self._base.pop((layer.name, idx), None)

    # ------------------------------------------------------------------ segmenting
    def update_from_prompts(self) -> None:
        """Re-segment the current slice from its prompts (in a worker; a change made meanwhile runs after it)."""
        from ..interactive import prompted_mask, slice_prompts

        ctx = self.ctx
        tasks = ctx.tasks
        if tasks.busy:
            if not self._dirty:
                self._dirty = True
                QTimer.singleShot(50, self._rerun_if_dirty)
            return
        try:
            layer, idx, image = ctx.current_slice()
            clicks, boxes = self.prompt_layers(layer)
        except Exception:  # noqa: BLE001 - no image chosen: nothing to do
            return
        rects = [d for d, kind in zip(boxes.data, boxes.shape_type) if kind == "rectangle"]
        prompts = slice_prompts(clicks.data, clicks.features["positive"].tolist(), rects, idx, image.shape[:2])
        if not prompts:
            return
        key = (layer.name, idx)
        ctx.state.effort.prompts(key, len(prompts.points), len(prompts.boxes))
        self._base.setdefault(key, ctx.state.probabilities.get(key))
        base, state, self._dirty = self._base[key], ctx.state, False
        c = ctx.propose.choices(need_bank=False)
        with_references = PROPOSERS.get(c.proposer).load().min_k == 0 and c.bank is not None

        def work():
            tasks.report(0, 0, "segmenting..." if state.prompt_model_loaded else "loading LiteMedSAM...")
            if with_references:  # the chosen proposer reads the references and the prompts together
                bank = ReferenceBank.open(c.bank)
                proposal = state.pipeline(c).propose(bank, image, prompts={"boxes": prompts.boxes,
                                                                           "points": prompts.points})
                return proposal.probability, None, f"{len(proposal.supports)} references and your prompts"
            return prompted_mask(state.prompt_model(), image, prompts, base)

        def show(result):
            prob, iou, how = result
            quality = "" if iou is None else f"; predicted IoU {iou:.2f}"
            ctx.propose.show_proposal((layer, idx, image, Proposal(prob, [], note=quality.lstrip("; "))),
                                      select=False, over_edits="merge")  # hand edits survive the prompt
            model = PROPOSERS.get(c.proposer).label if with_references else "LiteMedSAM"
            ctx.status.setText(f"{model} from {how}{quality}. Edit, then Accept")

        tasks.run(work, show, "segmenting from your prompts...")

    def _rerun_if_dirty(self) -> None:
        """Prompts changed while a task ran: segment again once it is done."""
        if not self._dirty:
            return
        if self.ctx.tasks.busy:
            QTimer.singleShot(50, self._rerun_if_dirty)
            return
        self.update_from_prompts()


__all__ = ["PromptPanel"]
