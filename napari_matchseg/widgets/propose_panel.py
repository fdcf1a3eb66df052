"""The "Propose" box: the models and their options, propose / accept, propose all, suggest the next slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QLabel, QListWidget, QSlider, \
    QSpinBox, QToolButton, QWidget

from ..bank import ReferenceBank
from ..errors import MatchsegError
from ..fsutil import same_folder
from ..proposers import PROPOSERS, suggested_retriever
from ..refiners import refiner_choices
from ..retrieval import RETRIEVERS
from ._qt import button, notify_error, row, shows_errors, typed_path
from .slices import ROLE, get_layer, labels_slice, slice_name, slice_origin, spatial_shape, to_frame
from .review import ReviewList
from .state import Choices


class ProposePanel(QGroupBox):
    def __init__(self, ctx):
        super().__init__("Propose")
        self.ctx = ctx
        self._confirm_overwrite = None  # (labels layer, slice) whose edits the next Propose may replace
        s = ctx.state.settings
        form = QFormLayout(self)
        self.retriever_combo = QComboBox()
        self.retriever_combo.addItems(RETRIEVERS.names())
        self.retriever_combo.setCurrentText(s.retriever)
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 32)
        self.k_spin.setValue(s.k)
        self.proposer_combo = QComboBox()
        self.proposer_combo.addItems(PROPOSERS.names())
        self.proposer_combo.setCurrentText(s.proposer)
        self.refiner_combo = QComboBox()
        self.refiner_combo.addItems(refiner_choices())
        self.refiner_combo.setCurrentText(s.refiner)
        self.refiner_combo.setToolTip("SAM-Match: the proposal's confident pixels become a box (and points) for a "
                                      "pretrained SAM, whose mask is kept where it agrees with the proposal. "
                                      "LiteMedSAM is installed with the plugin; SAM 2 needs its weights")
        self.mirror_check = QCheckBox("average with the mirror image")
        self.mirror_check.setToolTip("MatchSeg: also segment the left-right mirror image and average the two "
                                     "(steadier proposals, about 1.5x the time)")
        self.mirror_check.setChecked(s.mirror_tta)
        self.proposer_combo.currentTextChanged.connect(lambda name: self.mirror_check.setEnabled(name == "matchseg"))
        self._proposer_name = s.proposer
        self.proposer_combo.currentTextChanged.connect(self._follow_proposer)
        self.mirror_check.setEnabled(s.proposer == "matchseg")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.device_combo.setCurrentText(s.device)
        self.threshold = QSlider(Qt.Horizontal)
        self.threshold.setRange(1, 99)
        self.threshold.setValue(int(round(s.threshold * 100)))
        self.threshold.valueChanged.connect(self._rethreshold)
        # the everyday actions first; the model's options folded away below (a 1366 x 768 screen shows the actions)
        self.propose_btn = button("Propose", self.propose_current, "propose a mask for the current image/slice (Alt+P)")
        self.accept_btn = button("Accept", self.accept_current, "add the (edited) proposal to the bank (Alt+A)")
        self.accept_next_btn = button("Accept + next", self.accept_and_next,
                                      "accept, then go to the next proposal to review, or the suggested next image "
                                      "(Alt+Shift+A)")
        form.addRow(row(self.propose_btn, self.accept_btn, self.accept_next_btn))
        self.propose_all_btn = button("Propose all", self.propose_all,
                                      "propose a mask for every image/slice not yet in the bank")
        self.suggest_btn = button("Suggest next", self.suggest_next,
                                  "go to the unlabelled slice the bank covers worst (Alt+N)")
        form.addRow(row(self.propose_all_btn, self.suggest_btn))
        self.threshold_value = QLabel(f"{s.threshold:.2f}")
        self.threshold.valueChanged.connect(lambda v: self.threshold_value.setText(f"{v / 100:.2f}"))
        form.addRow("threshold", row(self.threshold, self.threshold_value))
        self.review = ReviewList(ctx)  # the proposals not yet accepted, least sure first
        form.addRow(self.review.label, self.review)
        self.matches = QListWidget()
        self.matches.setMaximumHeight(80)
        form.addRow("retrieved", self.matches)
        self.options_btn = QToolButton()
        self.options_btn.setText("Model options")
        self.options_btn.setCheckable(True)
        self.options_btn.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.options_btn.setArrowType(Qt.RightArrow)
        self.options = QWidget()
        options = QFormLayout(self.options)
        options.setContentsMargins(0, 0, 0, 0)
        options.addRow("retriever", self.retriever_combo)
        options.addRow("k", self.k_spin)
        options.addRow("proposer", self.proposer_combo)
        options.addRow("refine", self.refiner_combo)
        options.addRow("", self.mirror_check)
        options.addRow("device", self.device_combo)
        options.addRow("MatchSeg", row(
            button("Choose...", self._browse_checkpoint, "propose with another MatchSeg checkpoint (.safetensors)"),
            button("Use shipped", lambda: self.use_checkpoint(""), "go back to the checkpoint the plugin ships")))
        self.checkpoint_label = QLabel()  # the one in use, on a line of its own: file names are long
        self.checkpoint_label.setWordWrap(True)
        options.addRow("", self.checkpoint_label)
        self.options_btn.toggled.connect(self.show_options)
        form.addRow(self.options_btn)
        form.addRow(self.options)
        self.show_options(False)
        self.refresh_review = self.review.refresh
        self.refresh_review()

    def _follow_proposer(self, name: str) -> None:
        """A retriever left at the old proposer's own follows to the new proposer's own (the context proposer
        retrieves with LiteMedSAM's embedding, which it computes anyway); one the user chose stays."""
        if self.retriever_combo.currentText() == suggested_retriever(self._proposer_name):
            self.retriever_combo.setCurrentText(suggested_retriever(name))
        self._proposer_name = name

    def show_options(self, shown: bool) -> None:
        self.options.setVisible(shown)
        self.options_btn.setArrowType(Qt.DownArrow if shown else Qt.RightArrow)
        if self.options_btn.isChecked() != shown:
            self.options_btn.setChecked(shown)

    def choices(self, need_bank: bool = True) -> Choices:
        """The current choices; ``need_bank=False`` for an action that works without a bank (Propagate)."""
        s, state = self.ctx.state.settings, self.ctx.state
        bank = state.need_bank().path if need_bank or state.bank is not None else None
        return Choices(proposer=self.proposer_combo.currentText(), retriever=self.retriever_combo.currentText(),
                       k=self.k_spin.value(), device=self.device_combo.currentText(),
                       refiner=self.refiner_combo.currentText(),
                       mirror_tta=self.mirror_check.isChecked(), checkpoint=s.checkpoint,
                       sam2_image_size=s.sam2_image_size, bank=bank)

    # ------------------------------------------------------------------ checkpoint
    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "MatchSeg checkpoint", "", "safetensors (*.safetensors)")
        if path:
            self.use_checkpoint(path)

    def use_checkpoint(self, path: str) -> None:
        """Propose and learn with the MatchSeg checkpoint ``path`` from now on ("" = the shipped one). A file that
        is not a usable checkpoint is refused with the reason, and the one in use stays."""
        if path:
            from ..checkpoint import build_matchseg  # torch: not at import (napari starts faster without it)

            path = typed_path(path)
            try:
                build_matchseg(path)
            except MatchsegError as exc:
                notify_error(str(exc))
                return
        self.set_checkpoint(path)

    def set_checkpoint(self, path: str) -> None:
        """Switch to a checkpoint already known to be good (one a worker just wrote, or one checked above)."""
        self.ctx.state.settings.checkpoint = path
        self.ctx.save_settings()
        self.show_checkpoint()

    def show_checkpoint(self) -> None:
        """Which MatchSeg proposes, and whether it was tuned on another bank than the open one (a checkpoint in
        use stays in use when another bank is opened)."""
        path, bank = self.ctx.state.settings.checkpoint, self.ctx.state.bank
        if not path:
            self.checkpoint_label.setText("shipped checkpoint")
            self.checkpoint_label.setToolTip("the universal checkpoint shipped with the plugin")
            return
        note = ""
        if not Path(path).is_file():
            note = " (missing: use the shipped one or choose another)"
        elif bank is not None:
            from ..checkpoint import checkpoint_bank

            try:
                tuned_on = checkpoint_bank(path)
            except MatchsegError as exc:
                tuned_on, note = None, f" (unreadable: {exc})"
            if tuned_on is not None and not same_folder(tuned_on, bank.path):
                note = " (tuned on another bank)"
        self.checkpoint_label.setText(Path(path).name + note)
        self.checkpoint_label.setToolTip(path)

    # ------------------------------------------------------------------ propose / accept
    def _ready_to_propose(self):
        """(choices, task runner, state) once the bank has references; the choices are saved as the settings."""
        self.ctx.state.need_references()
        self.ctx.save_settings()
        return self.choices(), self.ctx.tasks, self.ctx.state

    @shows_errors
    def propose_current(self) -> None:
        c, tasks, state = self._ready_to_propose()
        layer, idx, image = self.ctx.current_slice()
        state.effort.shown((layer.name, idx))

        def work():
            tasks.report(0, 0, "loading the model...")
            pipeline = state.pipeline(c)
            bank = ReferenceBank.open(c.bank)  # the worker's own view: the GUI may add references meanwhile
            result = pipeline.propose(bank, image, progress=tasks.progress_callback("embedding the bank..."),
                                      cancel=tasks.cancel_event.is_set)
            return layer, idx, image, result

        tasks.run(work, self.show_proposal, "proposing...")

    def _proposal_layers(self, layer):
        """The proposal (labels) and probability (image) layers of ``layer``, made when missing or resized."""
        viewer, shape = self.ctx.viewer, spatial_shape(layer)
        made = {}
        # the proposal's metadata: whose it is, and a volume's geometry (Save as .nii.gz keeps the source's affine)
        volume = (layer.metadata or {}).get("volume")
        meta = {ROLE: "proposal", "image": layer.name, **({"volume": volume} if volume else {})}
        for name, add in ((f"{layer.name} proposal", lambda n: viewer.add_labels(
                              np.zeros(shape, np.uint8), name=n, opacity=0.5, metadata=meta, scale=layer.scale)),
                          (f"{layer.name} probability", lambda n: viewer.add_image(
                              np.zeros(shape, np.float32), name=n, colormap="magma", opacity=0.4,
                              contrast_limits=(0, 1), visible=False, metadata={ROLE: "probability"},
                              scale=layer.scale))):
            if name not in viewer.layers or viewer.layers[name].data.shape != shape:
                if name in viewer.layers:
                    viewer.layers.remove(name)
                add(name)
            made[name] = viewer.layers[name]
        return made[f"{layer.name} proposal"], made[f"{layer.name} probability"]

    def show_proposal(self, payload, select: bool = True, over_edits: str = "ask") -> bool:
        """Put a proposal into ``<image> proposal`` (one undoable step); False when the slice holds the user's edits
        and they were kept. ``over_edits``: "ask" (keep them; the same Propose again replaces them), "keep",
        "merge" (the new mask with the user's painted and erased pixels carried over: a prompt the user just gave)
        or "replace". ``select``: make that layer the active one."""
        layer, idx, image, result = payload
        ctx = self.ctx
        if layer not in ctx.viewer.layers:  # the image was deleted while its proposal ran: nothing to show it on
            ctx.status.setText(f"the proposal for {layer.name!r} was dropped: the image layer is gone")
            return False
        ctx.state.probabilities[(layer.name, idx)] = result.probability
        ctx.state.accepted.get(layer.name, set()).discard(idx)  # a new proposal is to review again
        self.refresh_review()
        active = ctx.viewer.layers.selection.active
        # the user moved on to another image meanwhile: the proposal is drawn, but their choices stay as they are
        moved_on = ctx.image_combo.currentText() != layer.name
        labels, prob_layer = self._proposal_layers(layer)
        if idx is None:
            prob_layer.data = result.probability
        else:
            prob_layer.data[idx] = to_frame(layer, result.probability)
            prob_layer.refresh()
        key = (labels.name, idx)
        if over_edits not in ("replace", "merge") and ctx.state.edits.edited(labels, idx) and \
                (over_edits == "keep" or self._confirm_overwrite != key):
            self._confirm_overwrite = key
            if over_edits == "ask":
                ctx.status.setText(f"{'this slice' if idx is None else f'slice {idx}'} has your edits, kept: press "
                                   "Propose again to replace them (Ctrl+Z undoes that)")
            return False
        self._confirm_overwrite = None
        mask = to_frame(layer, result.mask(self.threshold.value() / 100).astype(np.uint8))
        if over_edits == "merge":
            mask = ctx.state.edits.with_edits(labels, idx, mask)
        ctx.state.edits.write(labels, idx, mask)
        if moved_on:
            ctx.viewer.layers.selection.active = active
            ctx.status.setText(f"the proposal for {layer.name!r} is in {labels.name!r}")
            return True
        ctx.labels_combo.setCurrentText(labels.name)
        ctx.viewer.layers.selection.active = labels if select or active is None else active
        ctx.state.last_matches = result.supports
        self.matches.clear()
        for m in result.supports:
            self.matches.addItem(ctx.bank_panel.item(f"{m.score:.3f}  {m.id}", m.id))
        note = f"; {result.note}" if result.note else ""
        ctx.status.setText(f"proposal from {len(result.supports)} references{note}. Edit it with the brush/eraser, "
                           "then Accept")
        return True

    @shows_errors
    def propose_all(self) -> None:
        ctx = self.ctx
        c, tasks, state = self._ready_to_propose()
        layer, images, todo = ctx.series()
        stack = len(images) > 1

        def work():
            bank = ReferenceBank.open(c.bank)
            pipeline, results = state.pipeline(c), []
            for n, i in enumerate(todo):
                if tasks.cancel_event.is_set():
                    break  # keep what is done
                tasks.report(n, len(todo), f"proposing slice {i} ({n + 1} of {len(todo)})...")
                results.append((layer, i if stack else None, images[i], pipeline.propose(bank, images[i])))
            return results

        def show(results):
            kept = sum(not self.show_proposal(payload, over_edits="keep") for payload in results)
            ctx.status.setText(f"proposed {len(results)} of {len(todo)} unlabelled slices"
                               + (" (cancelled)" if len(results) < len(todo) else "")
                               + (f"; {kept} slices with your edits were kept as they are" if kept else ""))

        tasks.run(work, show, "proposing all unlabelled slices...")

    @shows_errors
    def suggest_next(self) -> None:
        ctx = self.ctx
        layer, images, todo = ctx.series()
        bank_path, retriever_name, tasks = ctx.state.bank.path, self.retriever_combo.currentText(), ctx.tasks
        stack = len(images) > 1
        probs = {i: ctx.state.probabilities[(layer.name, i if stack else None)] for i in todo
                 if (layer.name, i if stack else None) in ctx.state.probabilities}

        def work():
            from ..active import rank_unlabelled
            from ..retrieval import get_retriever

            return rank_unlabelled(ReferenceBank.open(bank_path), get_retriever(retriever_name), images, todo, probs,
                                   progress=tasks.progress_callback("embedding..."), cancel=tasks.cancel_event.is_set)

        def show(ranking):
            ctx.state.suggestions = ranking
            best = ranking[0]
            if stack:
                ctx.viewer.dims.set_current_step(0, best.index)
            extra = f", proposal uncertainty {best.uncertainty:.2f}" if best.uncertainty is not None else ""
            ctx.status.setText(f"label slice {best.index} next: distance to the bank {best.distance:.3f}{extra} "
                               f"({len(ranking)} unlabelled)")

        tasks.run(work, show, "ranking unlabelled slices...")

    def _rethreshold(self, value: int) -> None:
        try:
            layer, idx, _ = self.ctx.current_slice()
        except MatchsegError:
            return
        prob = self.ctx.state.probabilities.get((layer.name, idx))
        name = f"{layer.name} proposal"
        if prob is None or name not in self.ctx.viewer.layers:
            return
        labels = self.ctx.viewer.layers[name]
        if self.ctx.state.edits.edited(labels, idx):
            self.ctx.status.setText("this slice has your edits: the threshold applies to new proposals only")
            return
        self.ctx.state.edits.write(labels, idx, to_frame(layer, (prob >= value / 100).astype(np.uint8)))

    @shows_errors
    def accept_current(self) -> bool:
        """Store the current slice's (edited) proposal in the bank; True once stored."""
        ctx = self.ctx
        bank = ctx.state.need_bank()
        layer, idx, image = ctx.current_slice()
        name = f"{layer.name} proposal"
        if name not in ctx.viewer.layers:  # never another layer's mask: it could belong to another image
            raise MatchsegError(f"{layer.name!r} has no proposal to accept: Propose first (Alt+P), or paint its "
                                "mask in a labels layer and use Add as reference")
        labels = get_layer(ctx.viewer, name, "labels")
        ctx.state.edited_on_accept.setdefault(layer.name, {})[idx] = ctx.state.edits.edited(labels, idx)
        ctx.bank_panel.store(bank, image, labels_slice(labels, idx, image, layer), slice_name(layer, idx),
                             "accepted_proposal", slice_origin(layer, idx))
        ctx.state.accepted.setdefault(layer.name, set()).add(idx)
        ctx.state.effort.record((layer.name, idx))
        self.refresh_review()
        return True

    def accept_and_next(self) -> None:
        """Accept, then go to the next proposal to review (the least sure), or when none is left to the suggested
        next slice (one key, Alt+Shift+A); nothing moves if Accept failed."""
        if self.accept_current():
            nxt = self.review.next_to_review()
            if nxt is None:
                self.suggest_next()
                return
            self.ctx.viewer.dims.set_current_step(0, nxt)
            left = len(self.review)
            self.ctx.status.setText(f"accepted; {left} proposals left to review, the least sure shown")
