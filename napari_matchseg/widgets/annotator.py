"""The "Segment by reference" dock widget: a thin composition of panels over one state and one task runner.

Everything heavy (embedding the bank, loading a model, proposing, learning) runs in a worker thread with a
progress bar and a Cancel button (:mod:`.tasks`); errors become napari notifications carrying the core's
message. The state that matters is the bank on disk, written as you go (:mod:`.state` holds the rest).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QLabel, QProgressBar, QScrollArea, QVBoxLayout, \
    QWidget

from ..background import BackgroundEmbedder
from ..errors import InputError
from ..settings import Settings
from ._qt import StatusLine, button, narrow_combos, row
from .bank_panel import BankPanel
from .export_panel import ExportPanel
from .learn_panel import LearnPanel
from .prompt_panel import PromptPanel
from .propagate_panel import PropagatePanel
from .propose_panel import ProposePanel
from .slices import all_slices, current_index, get_layer, is_users_image, series_info, slice_at_cursor, slice_name
from .state import AnnotatorState
from .tasks import TaskRunner


class _Text(QObject):
    """Carries status text from a background thread to the GUI thread."""

    text = Signal(str)


class ReferenceAnnotator(QWidget):
    """Label a few images, retrieve similar references, propose masks, accept or edit, export."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.state = AnnotatorState(Settings.load())
        outer = QVBoxLayout(self)
        content = QWidget()  # the panels scroll; progress, Cancel and the status line stay in view
        root = QVBoxLayout(content)
        # the everyday actions first (which image, propose, accept, correct), the bank and the rest below
        self.bank_panel = BankPanel(self)
        root.addWidget(self._layers_box())
        self.propose = ProposePanel(self)
        root.addWidget(self.propose)
        self.propagation = PropagatePanel(self)
        self.propose.layout().addRow(self.propagation)
        self.prompts = PromptPanel(self)
        root.addWidget(self.prompts)
        root.addWidget(self.bank_panel)
        self.export = ExportPanel(self)
        root.addWidget(self.export)
        self.learn = LearnPanel(self)
        root.addWidget(self.learn)
        root.addStretch()
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # the panels fit the dock's width
        self.scroll.setFrameShape(QScrollArea.NoFrame)
        self.scroll.setWidget(content)
        outer.addWidget(self.scroll)
        narrow_combos(content)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_btn = button("Cancel", self.cancel)
        self.cancel_btn.setEnabled(False)
        outer.addLayout(row(self.progress, self.cancel_btn))
        self.status = StatusLine("")
        outer.addWidget(self.status)
        self.tasks = TaskRunner(self.progress, self.cancel_btn, self.status)
        self.propose.show_checkpoint()
        self._bind_keys()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()
        self._start_background()
        self.show_where()
        if self.settings.bank and (Path(self.settings.bank) / "bank.json").is_file():
            self.open_bank(self.settings.bank)

    def _layers_box(self) -> QGroupBox:
        box = QGroupBox("Layers")
        form = QFormLayout(box)
        self.image_combo, self.labels_combo = QComboBox(), QComboBox()
        form.addRow("image", self.image_combo)
        form.addRow("labels", self.labels_combo)
        self.where = QLabel("")  # which image of a series is on screen
        self.where.setWordWrap(True)
        self.prev_btn = button("< Previous", lambda: self.step_image(-1), "the previous image of the series (Left)")
        self.next_btn = button("Next >", lambda: self.step_image(1), "the next image of the series (Right)")
        form.addRow(self.where)
        form.addRow(row(self.prev_btn, self.next_btn))
        return box

    def step_image(self, step: int) -> None:
        """Show the previous or next image of a stack or series (napari's Left/Right keys do the same)."""
        try:
            layer = get_layer(self.viewer, self.image_combo.currentText(), "image")
            idx = current_index(self.viewer, layer)
        except InputError:
            return
        if idx is not None:
            n = np.asarray(layer.data).shape[0]
            self.viewer.dims.set_current_step(0, min(max(idx + step, 0), n - 1))

    def show_where(self, *_) -> None:
        """'image 3 of 12: benign (7) (420 x 380)' for a stack or series; nothing for a single image."""
        try:
            layer = get_layer(self.viewer, self.image_combo.currentText(), "image")
            idx = current_index(self.viewer, layer)
        except InputError:
            idx = None
        stack = idx is not None
        for w in (self.prev_btn, self.next_btn, self.where):
            w.setVisible(stack)
        if not stack:
            return
        n, info = np.asarray(layer.data).shape[0], series_info(layer)
        h, w = info.sizes[idx] if info is not None else np.asarray(layer.data).shape[1:3]
        self.where.setText(f"image {idx + 1} of {n}: {slice_name(layer, idx)} ({w} x {h})")
        self.prev_btn.setEnabled(idx > 0)
        self.next_btn.setEnabled(idx < n - 1)

    KEYS = {"Alt-P": "propose_current", "Alt-A": "accept_current", "Alt-N": "suggest_next",  # docs/plugin.md
            "Alt-Shift-A": "accept_and_next"}

    def _bind_keys(self) -> None:
        """Viewer keys that no napari layer uses (P is paint in a Labels layer, A and N are taken too), so they
        work whichever layer is selected."""
        for key, action in self.KEYS.items():
            try:
                self.viewer.bind_key(key, lambda v, a=action: getattr(self, a)(), overwrite=True)
            except Exception:  # noqa: BLE001 - key bindings are a convenience
                pass

    def _start_background(self) -> None:
        """Load LiteMedSAM now and embed each image as it is shown (docs/plugin.md, "No waiting")."""
        self._background_text = _Text()
        self._background_text.text.connect(self.prompts.show_background_status)
        self.background = BackgroundEmbedder(self.state.prompt_model, self._background_text.text.emit)
        self.destroyed.connect(self.background.close)
        self.viewer.layers.selection.events.active.connect(self._follow_selection)
        self.viewer.dims.events.current_step.connect(self.embed_shown)
        self.viewer.dims.events.current_step.connect(self.show_where)
        self.image_combo.currentTextChanged.connect(self.embed_shown)
        self.image_combo.currentTextChanged.connect(self.show_where)
        self.image_combo.currentTextChanged.connect(lambda *_: self.propose.refresh_review())
        self.image_combo.currentTextChanged.connect(self._follow_image)
        if self.settings.background_embedding:
            self.background.request("", None)  # the model first, before any image
            self.embed_shown()

    def _follow_selection(self, *_) -> None:
        """The dock's image is the image layer the user selects."""
        active = self.viewer.layers.selection.active
        if is_users_image(active) and self.image_combo.findText(active.name) >= 0:
            self.image_combo.setCurrentText(active.name)

    def _follow_image(self, name: str) -> None:
        """Labels chosen for another image (its proposal) follow the dock's image to this image's proposal; labels
        the user made are left chosen."""
        current = self.labels_combo.currentText()
        owner = (self.viewer.layers[current].metadata or {}).get("image") if current in self.viewer.layers else None
        if owner is not None and owner != name and self.labels_combo.findText(f"{name} proposal") >= 0:
            self.labels_combo.setCurrentText(f"{name} proposal")

    def embed_shown(self, *_) -> None:
        """The image on screen starts its effort clock and goes to the background embedder (when wanted)."""
        try:
            layer, idx, image = self.current_slice()
        except Exception:  # noqa: BLE001 - no image, or not one LiteMedSAM reads: nothing to prepare
            return
        self.state.effort.shown((layer.name, idx))
        if not self.settings.background_embedding:
            return
        self.background.request(layer.name if idx is None else f"{layer.name} slice {idx}", image)

    def _refresh_layers(self, *_) -> None:
        from napari.layers import Labels

        choices = ((self.image_combo, is_users_image), (self.labels_combo, lambda ly: isinstance(ly, Labels)))
        for combo, wanted in choices:
            current = combo.currentText()
            combo.clear()
            combo.addItems([ly.name for ly in self.viewer.layers if wanted(ly)])
            if current:
                combo.setCurrentText(current)

    # ------------------------------------------------------------------ shared by the panels
    def current_slice(self):
        """(image layer, slice index or None, the image) the user is looking at."""
        layer = get_layer(self.viewer, self.image_combo.currentText(), "image")
        return (layer, *slice_at_cursor(self.viewer, layer))

    def series(self):
        """(layer, [slice images], indices not yet in the bank nor accepted) of the current image layer."""
        layer = get_layer(self.viewer, self.image_combo.currentText(), "image")
        images = all_slices(layer)
        bank = self.state.need_bank()
        done = self.state.accepted.get(layer.name, set())
        todo = [i for i, im in enumerate(images) if bank.find_image(im) is None
                and (i if len(images) > 1 else None) not in done]
        if not todo:
            raise InputError("every slice of this layer is already in the bank or accepted")
        return layer, images, todo

    def save_settings(self) -> None:
        s, p = self.settings, self.propose
        s.retriever, s.k = p.retriever_combo.currentText(), p.k_spin.value()
        s.proposer, s.device = p.proposer_combo.currentText(), p.device_combo.currentText()
        s.refiner, s.threshold = p.refiner_combo.currentText(), p.threshold.value() / 100
        s.mirror_tta, s.semi_rounds = p.mirror_check.isChecked(), self.learn.rounds_spin.value()
        s.export_format = self.export.export_format.currentText()
        s.propagation_proposer = self.propagation.propagate_combo.currentText()
        s.bank = str(self.bank.path) if self.bank is not None else s.bank  # an empty bank is falsy
        s.save()

    _save_settings = save_settings

    def cancel(self) -> None:
        self.tasks.cancel()

    # ------------------------------------------------------------------ the public face (tests, scripts, users)
    settings = property(lambda self: self.state.settings)
    bank = property(lambda self: self.state.bank)
    busy = property(lambda self: self.tasks.busy)
    last_matches = property(lambda self: self.state.last_matches)
    suggestions = property(lambda self: self.state.suggestions)
    accepted = property(lambda self: self.state.accepted)
    _probabilities = property(lambda self: self.state.probabilities)
    semi_config = property(lambda self: self.state.semi_config,
                           lambda self, value: setattr(self.state, "semi_config", value))

    def __getattr__(self, name: str):
        """Controls and actions of the panels as the widget's own (``widget.k_spin``, ``widget.propose_current``)."""
        if not name.startswith("_"):
            for panel in ("bank_panel", "propose", "propagation", "prompts", "learn", "export"):
                owner = self.__dict__.get(panel)
                if owner is not None and (name in vars(owner) or name in vars(type(owner))):
                    return getattr(owner, name)
        raise AttributeError(name)
