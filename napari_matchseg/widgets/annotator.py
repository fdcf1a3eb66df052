"""The "Segment by reference" dock widget: bank, references, propose, accept, export.

Everything heavy (embedding the bank, loading a model, proposing) runs in a worker thread with a progress
bar and a Cancel button; errors become napari notifications carrying the core's message. The widget keeps
no state that matters beyond the bank on disk, which is written as you go.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                            QLineEdit, QListWidget, QProgressBar, QPushButton, QSlider, QSpinBox, QVBoxLayout,
                            QWidget)

from ..bank import ReferenceBank
from ..errors import Cancelled, DuplicateReference, InputError, MatchsegError, name_list
from ..fsutil import same_folder
from ..image_io import check_image, check_mask, write_mask, write_mask_tiff
from ..proposers import PROPOSERS
from ..retrieval import RETRIEVERS
from ..settings import Settings


class _Signals(QObject):
    progress = Signal(int, int, str)


def _typed_path(text: str) -> str:
    """A path as a person types or pastes it: spaces around it dropped, ``~`` the home folder, made absolute (a
    relative one is taken from where napari was started) so that it means the same in the settings next time."""
    return os.path.abspath(os.path.expanduser(text.strip()))


def _button(text: str, slot, tip: str = "") -> QPushButton:
    b = QPushButton(text)
    b.clicked.connect(slot)
    if tip:
        b.setToolTip(tip)
    return b


def _row(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    for w in widgets:
        row.addWidget(w)
    return row


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def _notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


class ReferenceAnnotator(QWidget):
    """Label a few images, retrieve similar references, propose masks, accept or edit, export."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.settings = Settings.load()
        self.bank: ReferenceBank | None = None
        self.busy = False
        self._cancel = threading.Event()
        self._worker = None
        self._proposers: dict[tuple, object] = {}
        self._probabilities: dict[tuple[str, int | None], np.ndarray] = {}
        self.last_matches: list = []
        self.accepted: dict[str, set] = {}
        self.semi_config = None  # a SemiConfig for "Learn from unlabelled" (None: its defaults)
        self._signals = _Signals()
        self._signals.progress.connect(self._on_progress)
        self._build_ui()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()
        if self.settings.bank and (Path(self.settings.bank) / "bank.json").is_file():
            self.open_bank(self.settings.bank)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        s = self.settings
        root = QVBoxLayout(self)
        box = QGroupBox("Reference bank")
        lay = QVBoxLayout(box)
        self.bank_path = QLineEdit(s.bank)
        self.bank_path.setPlaceholderText("bank folder (new or existing)")
        browse = _button("...", self._browse_bank)
        browse.setMaximumWidth(30)
        lay.addLayout(_row(self.bank_path, browse,
                           _button("Open / create", lambda: self.open_bank(self.bank_path.text()))))
        self.bank_label = QLabel("no bank open")
        lay.addWidget(self.bank_label)
        self.references = QListWidget()
        self.references.setMaximumHeight(120)
        lay.addWidget(self.references)
        self.add_btn = _button("Add as reference", self.add_current_as_reference,
                               "the current image/slice with its current labels")
        lay.addLayout(_row(self.add_btn, _button("Remove selected", self.remove_selected)))
        root.addWidget(box)

        box = QGroupBox("Layers")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        form.addRow("image", self.image_combo)
        form.addRow("labels", self.labels_combo)
        root.addWidget(box)

        box = QGroupBox("Propose")
        form = QFormLayout(box)
        self.retriever_combo = QComboBox()
        self.retriever_combo.addItems(RETRIEVERS.names())
        self.retriever_combo.setCurrentText(s.retriever)
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 32)
        self.k_spin.setValue(s.k)
        self.proposer_combo = QComboBox()
        self.proposer_combo.addItems(PROPOSERS.names())
        self.proposer_combo.setCurrentText(s.proposer)
        self.refine_check = QCheckBox("refine with SAM 2 prompts")
        self.refine_check.setChecked(s.refine)
        self.mirror_check = QCheckBox("average with the mirror image")
        self.mirror_check.setToolTip("MatchSeg: also segment the left-right mirror image and average the two "
                                     "(steadier proposals, about 1.5x the time)")
        self.mirror_check.setChecked(s.mirror_tta)
        self.proposer_combo.currentTextChanged.connect(
            lambda name: self.mirror_check.setEnabled(name == "matchseg"))
        self.mirror_check.setEnabled(s.proposer == "matchseg")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.device_combo.setCurrentText(s.device)
        self.threshold = QSlider(Qt.Horizontal)
        self.threshold.setRange(1, 99)
        self.threshold.setValue(int(round(s.threshold * 100)))
        self.threshold.valueChanged.connect(self._rethreshold)
        form.addRow("retriever", self.retriever_combo)
        form.addRow("k", self.k_spin)
        form.addRow("proposer", self.proposer_combo)
        form.addRow("", self.refine_check)
        form.addRow("", self.mirror_check)
        form.addRow("device", self.device_combo)
        form.addRow("MatchSeg", _row(
            _button("Choose...", self._browse_checkpoint, "propose with another MatchSeg checkpoint (.safetensors)"),
            _button("Use shipped", lambda: self.use_checkpoint(""), "go back to the checkpoint the plugin ships")))
        self.checkpoint_label = QLabel()  # the one in use, on a line of its own: file names are long
        self.checkpoint_label.setWordWrap(True)
        form.addRow("", self.checkpoint_label)
        self._show_checkpoint()
        form.addRow("threshold", self.threshold)
        self.propose_btn = _button("Propose", self.propose_current, "propose a mask for the current image/slice (P)")
        self.accept_btn = _button("Accept", self.accept_current, "add the (edited) proposal to the bank (A)")
        form.addRow(_row(self.propose_btn, self.accept_btn))
        self.propose_all_btn = _button("Propose all unlabelled", self.propose_all)
        self.suggest_btn = _button("Suggest next", self.suggest_next,
                                   "go to the unlabelled slice the bank covers worst (N)")
        form.addRow(_row(self.propose_all_btn, self.suggest_btn))
        self.matches = QListWidget()
        self.matches.setMaximumHeight(100)
        form.addRow("retrieved", self.matches)
        root.addWidget(box)

        self.export_format = QComboBox()
        self.export_format.addItems(["png-255", "png-labels", "tif-255"])
        self.export_format.setToolTip("0/255 PNG, label values (0/1) PNG, or 0/255 TIFF")
        self.export_format.setCurrentText(s.export_format)
        root.addLayout(_row(QLabel("export as"), self.export_format))
        self.export_btn = _button("Export accepted masks...", self._browse_export)
        self.finetune_btn = _button("Fine-tune on bank", self.finetune,
                                    "adapt MatchSeg to this bank in the background (a few minutes on a CPU)")
        self.download_btn = _button("Download weights", self.download_weights,
                                    "fetch the checkpoints the chosen retriever/proposer need")
        self.semi_btn = _button("Learn from unlabelled", self.learn_from_unlabelled,
                                "pseudo-label this layer's unlabelled slices (SAM 2 refined when chosen above) "
                                "and fine-tune MatchSeg on them with the bank, in the background")
        root.addLayout(_row(self.export_btn, self.download_btn))
        self.rounds_spin = QSpinBox()
        self.rounds_spin.setRange(1, 20)
        self.rounds_spin.setValue(s.semi_rounds)
        self.rounds_spin.setToolTip("pseudo-label / fine-tune rounds of Learn from unlabelled; more than a finished "
                                    "run had goes on from it (its earlier result is kept)")
        root.addLayout(_row(self.finetune_btn, self.semi_btn))
        root.addLayout(_row(QLabel("learning rounds"), self.rounds_spin))
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_btn = _button("Cancel", self.cancel)
        self.cancel_btn.setEnabled(False)
        root.addLayout(_row(self.progress, self.cancel_btn))
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        root.addStretch()
        try:
            self.viewer.bind_key("p", lambda v: self.propose_current(), overwrite=True)
            self.viewer.bind_key("a", lambda v: self.accept_current(), overwrite=True)
            self.viewer.bind_key("n", lambda v: self.suggest_next(), overwrite=True)
        except Exception:  # key bindings are a convenience
            pass

    def _refresh_layers(self, *_) -> None:
        from napari.layers import Image, Labels

        for combo, kind in ((self.image_combo, Image), (self.labels_combo, Labels)):
            current = combo.currentText()
            combo.clear()
            combo.addItems([ly.name for ly in self.viewer.layers if isinstance(ly, kind)])
            if current:
                combo.setCurrentText(current)

    def _save_settings(self) -> None:
        s = self.settings
        s.retriever, s.k = self.retriever_combo.currentText(), self.k_spin.value()
        s.proposer, s.device = self.proposer_combo.currentText(), self.device_combo.currentText()
        s.refine, s.threshold = self.refine_check.isChecked(), self.threshold.value() / 100
        s.mirror_tta, s.semi_rounds = self.mirror_check.isChecked(), self.rounds_spin.value()
        s.export_format = self.export_format.currentText()
        s.bank = str(self.bank.path) if self.bank is not None else s.bank  # an empty bank is falsy
        s.save()

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

            path = _typed_path(path)
            try:
                build_matchseg(path)
            except MatchsegError as exc:
                _notify_error(str(exc))
                return
        self._set_checkpoint(path)

    def _set_checkpoint(self, path: str) -> None:
        """Switch to a checkpoint already known to be good (one a worker just wrote, or one checked above)."""
        self.settings.checkpoint = path
        self._save_settings()
        self._show_checkpoint()

    def _show_checkpoint(self) -> None:
        """Which MatchSeg proposes, and whether it was tuned on another bank than the open one (a checkpoint in
        use stays in use when another bank is opened)."""
        path = self.settings.checkpoint
        if not path:
            self.checkpoint_label.setText("shipped checkpoint")
            self.checkpoint_label.setToolTip("the universal checkpoint shipped with the plugin")
            return
        note = ""
        if not Path(path).is_file():
            note = " (missing: use the shipped one or choose another)"
        elif self.bank is not None:
            from ..checkpoint import checkpoint_bank

            try:
                tuned_on = checkpoint_bank(path)
            except MatchsegError as exc:
                tuned_on, note = None, f" (unreadable: {exc})"
            if tuned_on is not None and not same_folder(tuned_on, self.bank.path):
                note = " (tuned on another bank)"
        self.checkpoint_label.setText(Path(path).name + note)
        self.checkpoint_label.setToolTip(path)

    # ------------------------------------------------------------------ bank
    def _browse_bank(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Bank folder")
        if folder:
            self.bank_path.setText(folder)
            self.open_bank(folder)

    def open_bank(self, path: str) -> None:
        """Open (or create) the bank at ``path`` as typed: ``~`` is the home folder and a relative path is taken
        from where napari was started, then kept absolute (settings and checkpoints must mean the same next time)."""
        if not path.strip():
            _notify_error("choose a folder for the reference bank first")
            return
        try:
            self.bank = ReferenceBank.open(_typed_path(path), create=True)
        except MatchsegError as exc:
            _notify_error(str(exc))
            return
        self.bank_path.setText(str(self.bank.path))
        self._save_settings()
        self._refresh_references()
        self._show_checkpoint()

    def _refresh_references(self) -> None:
        self.references.clear()
        if self.bank is None:
            self.bank_label.setText("no bank open")
            return
        self.bank.refresh()
        for ref in self.bank:
            tag = "accepted" if ref.source == "accepted_proposal" else "manual"
            self.references.addItem(self._item(f"{ref.id}  [{tag}]  {ref.original_name}", ref.id))
        self.bank_label.setText(f"{self.bank.path}: {len(self.bank)} references")

    def _item(self, text: str, ref_id: str):
        """A list entry with a thumbnail of the reference (its mask outlined in red)."""
        from qtpy.QtGui import QIcon, QImage, QPixmap
        from qtpy.QtWidgets import QListWidgetItem

        item = QListWidgetItem(text)
        try:
            thumb = self._thumbnail(ref_id)
            h, w = thumb.shape[:2]
            qimg = QImage(thumb.data, w, h, 3 * w, QImage.Format_RGB888).copy()
            item.setIcon(QIcon(QPixmap.fromImage(qimg)))
        except (MatchsegError, OSError):
            pass  # a reference that cannot be read still gets its line
        return item

    def _thumbnail(self, ref_id: str, size: int = 48) -> np.ndarray:
        from scipy import ndimage as ndi

        from ..image_io import to_float_rgb

        key = (str(self.bank.path), ref_id, self.bank.get(ref_id).mask_sha256)
        cache = self.__dict__.setdefault("_thumbs", {})
        if key not in cache:
            rgb = (to_float_rgb(self.bank.load_image(ref_id)) * 255).astype(np.uint8)
            mask = self.bank.load_mask(ref_id)
            rgb[mask & ~ndi.binary_erosion(mask, iterations=2)] = (255, 40, 40)
            ys = np.linspace(0, rgb.shape[0] - 1, size).astype(int)
            xs = np.linspace(0, rgb.shape[1] - 1, size).astype(int)
            cache[key] = np.ascontiguousarray(rgb[ys][:, xs])
        return cache[key]

    def _need_references(self) -> ReferenceBank:
        bank = self._need_bank()
        if len(bank) == 0:
            raise InputError("the bank is empty: label an image and press 'Add as reference' first")
        return bank

    def _need_bank(self) -> ReferenceBank:
        if self.bank is None:
            raise InputError("open or create a reference bank first (Reference bank > Open / create)")
        return self.bank

    def remove_selected(self) -> None:
        try:
            bank = self._need_bank()
            for item in self.references.selectedItems():
                bank.remove(item.text().split()[0])
        except MatchsegError as exc:
            _notify_error(str(exc))
        self._refresh_references()

    # ------------------------------------------------------------------ slices
    def _layer(self, name: str, kind: str):
        if not name or name not in self.viewer.layers:
            raise InputError(f"choose a {kind} layer first")
        return self.viewer.layers[name]

    def _image_slice(self) -> tuple[object, int | None, np.ndarray]:
        layer = self._layer(self.image_combo.currentText(), "image")
        data = np.asarray(layer.data)
        spatial = data.ndim - (1 if layer.rgb else 0)
        if spatial == 2:
            return layer, None, check_image(data, name=layer.name)
        if spatial == 3:
            idx = int(self.viewer.dims.current_step[0])
            idx = min(max(idx, 0), data.shape[0] - 1)
            return layer, idx, check_image(data[idx], name=f"{layer.name} slice {idx}")
        raise InputError(f"layer {layer.name!r} has shape {data.shape}: expected a 2D image or a stack of 2D "
                         "images (one slice = one image)")

    @staticmethod
    def _name(layer, idx: int | None) -> str:
        """The export/reference stem: the source file's when known, else layer name (+ slice index)."""
        files = (getattr(layer, "metadata", None) or {}).get("files")
        if files and (idx is None and len(files) == 1 or idx is not None and idx < len(files)):
            return Path(files[0 if idx is None else idx]).stem
        src = getattr(getattr(layer, "source", None), "path", None)
        stem = Path(src).stem if src and not Path(src).is_dir() else layer.name
        return stem if idx is None else f"{stem}_{idx:04d}"

    def _labels_slice(self, labels_layer, idx: int | None, image: np.ndarray) -> np.ndarray:
        data = np.asarray(labels_layer.data)
        sl = data if idx is None or data.ndim == 2 else data[idx]
        return check_mask(sl, image.shape, name=f"labels {labels_layer.name!r}")

    def add_current_as_reference(self) -> None:
        try:
            bank = self._need_bank()
            layer, idx, image = self._image_slice()
            labels = self._layer(self.labels_combo.currentText(), "labels")
            mask = self._labels_slice(labels, idx, image)
            self._store(bank, image, mask, self._name(layer, idx), "manual")
        except MatchsegError as exc:
            _notify_error(str(exc))

    def _store(self, bank, image, mask, name, source) -> None:
        try:
            ref = bank.add(image, mask, name=name, source=source)
            msg = f"added {ref.id} to the bank"
        except DuplicateReference as exc:
            ref = bank.update_mask(exc.existing_id, mask, source=source)
            msg = f"updated the mask of {ref.id}"
        self._refresh_references()
        self.status.setText(msg)

    # ------------------------------------------------------------------ workers
    def _run(self, fn, on_done, label: str) -> None:
        if self.busy:
            _notify_info("busy: wait for the current task or cancel it")
            return
        from napari.qt.threading import create_worker

        self._cancel.clear()
        self.busy = True
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.cancel_btn.setEnabled(True)
        self.status.setText(label)
        # errors go to our handler (a notification), never re-raised into the event loop
        self._worker = create_worker(fn, _connect={"returned": on_done, "errored": self._on_error,
                                                   "finished": self._on_finished})

    def _on_progress(self, done: int, total: int, text: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        if text:
            self.status.setText(text)

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, Cancelled):
            self.status.setText(f"cancelled: {exc}")
            return
        _notify_error(str(exc) if isinstance(exc, MatchsegError) else f"{type(exc).__name__}: {exc}")
        self.status.setText(f"error: {exc}")

    def _on_finished(self) -> None:
        self.busy = False
        self.progress.setVisible(False)
        self.cancel_btn.setEnabled(False)
        self._worker = None

    def cancel(self) -> None:
        self._cancel.set()
        self.status.setText("cancelling...")

    def _progress_cb(self, text: str):
        def cb(done: int, total: int) -> None:
            if self._cancel.is_set():
                raise Cancelled("cancelled by the user")
            self._signals.progress.emit(done, total, text)
        return cb

    # ------------------------------------------------------------------ propose / accept
    def _choices(self) -> dict:
        """The current choices, read on the GUI thread (workers never touch widgets)."""
        return {"proposer": self.proposer_combo.currentText(), "checkpoint": self.settings.checkpoint,
                "device": self.device_combo.currentText(), "sam2_image_size": self.settings.sam2_image_size,
                "retriever": self.retriever_combo.currentText(), "k": self.k_spin.value(),
                "refine": self.refine_check.isChecked(), "bank": self._need_bank().path,
                "mirror_tta": self.mirror_check.isChecked()}

    def _pipeline(self, c: dict):
        """The core pipeline for these choices; its models are built once and kept (in the worker: loading
        can take a while), and reused with new choices of k, retriever or mirror."""
        from ..pipeline import Pipeline, PipelineConfig
        from ..proposers import PROPOSERS
        from ..refiners import REFINERS

        options = {"checkpoint": c["checkpoint"] or None, "sam2_image_size": c["sam2_image_size"],
                   "mirror_tta": c["mirror_tta"] and c["proposer"] == "matchseg"}
        config = PipelineConfig(retriever=c["retriever"], proposer=c["proposer"], k=c["k"], device=c["device"],
                                refiner="sam2" if c["refine"] else "none", options=options)
        key = (c["proposer"], c["checkpoint"], c["device"], c["sam2_image_size"])
        if key not in self._proposers:
            entry = PROPOSERS.get(c["proposer"])
            self._proposers[key] = entry.build(config.values(entry), device=c["device"])
        proposer = self._proposers[key]
        if hasattr(proposer, "mirror_tta"):  # a per-proposal choice: same model, same cached support features
            proposer.mirror_tta = options["mirror_tta"]
        refiner = None
        if c["refine"]:
            entry = REFINERS.get("sam2")
            shared = proposer.shared_model(entry.shares_model)
            refiner = entry.build(config.values(entry), device=c["device"],
                                  **({"model": shared} if shared is not None else {}))
        return Pipeline(config, proposer=proposer, refiner=refiner)

    def propose_current(self) -> None:
        try:
            self._need_references()
            layer, idx, image = self._image_slice()
        except MatchsegError as exc:
            _notify_error(str(exc))
            return
        self._save_settings()
        c = self._choices()

        def work():
            self._signals.progress.emit(0, 0, "loading the model...")
            pipeline = self._pipeline(c)
            bank = ReferenceBank.open(c["bank"])  # the worker's own view: the GUI may add references meanwhile
            result = pipeline.propose(bank, image, progress=self._progress_cb("embedding the bank..."),
                                      cancel=self._cancel.is_set)
            return layer, idx, image, result

        self._run(work, self._show_proposal, "proposing...")

    def _show_proposal(self, payload) -> None:
        layer, idx, image, result = payload
        self._probabilities[(layer.name, idx)] = result.probability
        shape = np.asarray(layer.data).shape[: np.asarray(layer.data).ndim - (1 if layer.rgb else 0)]
        name = f"{layer.name} proposal"
        if name not in self.viewer.layers or self.viewer.layers[name].data.shape != shape:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.viewer.add_labels(np.zeros(shape, np.uint8), name=name, opacity=0.5)
        pname = f"{layer.name} probability"
        if pname not in self.viewer.layers or self.viewer.layers[pname].data.shape != shape:
            if pname in self.viewer.layers:
                self.viewer.layers.remove(pname)
            self.viewer.add_image(np.zeros(shape, np.float32), name=pname, colormap="magma", opacity=0.4,
                                  contrast_limits=(0, 1), visible=False)
        prob_layer, labels = self.viewer.layers[pname], self.viewer.layers[name]
        mask = result.mask(self.threshold.value() / 100).astype(np.uint8)
        if idx is None:
            prob_layer.data = result.probability
            labels.data = mask
        else:
            prob_layer.data[idx] = result.probability
            labels.data[idx] = mask
            prob_layer.refresh()
            labels.refresh()
        self.labels_combo.setCurrentText(name)
        self.viewer.layers.selection.active = labels
        self.last_matches = result.supports
        self.matches.clear()
        for m in result.supports:
            self.matches.addItem(self._item(f"{m.score:.3f}  {m.id}", m.id))
        note = f"; {result.note}" if result.note else ""
        self.status.setText(f"proposal from {len(result.supports)} references{note}. Edit it with the brush/eraser, "
                            "then Accept")

    def _series(self):
        """(layer, [slice images], indices not yet in the bank nor accepted) of the current image layer."""
        layer = self._layer(self.image_combo.currentText(), "image")
        data = np.asarray(layer.data)
        if data.ndim - (1 if layer.rgb else 0) == 2:
            images = [check_image(data, name=layer.name)]
        else:
            images = [data[i] for i in range(data.shape[0])]
        bank = self._need_bank()
        done = self.accepted.get(layer.name, set())
        todo = [i for i, im in enumerate(images) if bank.find_image(im) is None
                and (i if len(images) > 1 else None) not in done]
        if not todo:
            raise InputError("every slice of this layer is already in the bank or accepted")
        return layer, images, todo

    def propose_all(self) -> None:
        try:
            self._need_references()
            layer, images, todo = self._series()
        except MatchsegError as exc:
            _notify_error(str(exc))
            return
        self._save_settings()
        c = self._choices()
        stack = len(images) > 1

        def work():
            bank = ReferenceBank.open(c["bank"])
            pipeline, results = self._pipeline(c), []
            for n, i in enumerate(todo):
                if self._cancel.is_set():
                    break  # keep what is done
                self._signals.progress.emit(n, len(todo), f"proposing slice {i} ({n + 1} of {len(todo)})...")
                results.append((layer, i if stack else None, images[i], pipeline.propose(bank, images[i])))
            return results

        def show(results):
            for payload in results:
                self._show_proposal(payload)
            self.status.setText(f"proposed {len(results)} of {len(todo)} unlabelled slices"
                                + (" (cancelled)" if len(results) < len(todo) else ""))

        self._run(work, show, "proposing all unlabelled slices...")

    def suggest_next(self) -> None:
        try:
            layer, images, todo = self._series()
        except MatchsegError as exc:
            _notify_error(str(exc))
            return
        bank_path, retriever_name = self.bank.path, self.retriever_combo.currentText()
        stack = len(images) > 1
        probs = {i: self._probabilities[(layer.name, i if stack else None)] for i in todo
                 if (layer.name, i if stack else None) in self._probabilities}

        def work():
            from ..active import rank_unlabelled
            from ..retrieval import get_retriever

            return rank_unlabelled(ReferenceBank.open(bank_path), get_retriever(retriever_name), images, todo, probs,
                                   progress=self._progress_cb("embedding..."), cancel=self._cancel.is_set)

        def show(ranking):
            self.suggestions = ranking
            best = ranking[0]
            if stack:
                self.viewer.dims.set_current_step(0, best.index)
            extra = f", proposal uncertainty {best.uncertainty:.2f}" if best.uncertainty is not None else ""
            self.status.setText(f"label slice {best.index} next: distance to the bank {best.distance:.3f}{extra} "
                                f"({len(ranking)} unlabelled)")

        self._run(work, show, "ranking unlabelled slices...")

    def finetune(self) -> None:
        try:
            bank = self._need_bank()
            if len(bank) < 2:
                raise InputError("fine-tuning needs at least 2 references in the bank")
        except MatchsegError as exc:
            _notify_error(str(exc))
            return
        out = bank.path / "finetuned" / "matchseg_finetuned.safetensors"
        base = self.settings.checkpoint or None

        def work():
            from ..training.finetune import finetune

            return finetune(ReferenceBank.open(bank.path), out, base=base, steps=200, overwrite=True,
                            log=lambda m: None,
                            progress=lambda s, t, info: self._progress_cb("fine-tuning...")(s, t),
                            cancel=self._cancel.is_set)

        def done(path):
            self._set_checkpoint(str(path))
            self.status.setText(f"fine-tuned checkpoint in use: {path}")

        self._run(work, done, "fine-tuning MatchSeg on the bank...")

    def learn_from_unlabelled(self) -> None:
        """``matchseg semi`` on the unlabelled slices of the current layer; resumes a cancelled run."""
        try:
            bank = self._need_bank()
            if len(bank) < 2:
                raise InputError("learning from unlabelled images needs at least 2 references in the bank")
            layer, images, todo = self._series()
        except MatchsegError as exc:
            _notify_error(str(exc))
            return
        from ..training.semi import SemiConfig, default_run_dir, run_semi, run_start

        c = self._choices()
        cfg = dataclasses.replace(self.semi_config or SemiConfig(), refine="sam2" if c["refine"] else "none",
                                  device=c["device"], k=c["k"], sam2_image_size=c["sam2_image_size"],
                                  rounds=self.rounds_spin.value())
        stack = len(images) > 1
        unlabelled = [(f"{layer.name}-{i}" if stack else layer.name, images[i], f"layer {layer.name}, slice {i}")
                      for i in todo]
        run = default_run_dir(bank) / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in layer.name)
        base = run_start(self.settings.checkpoint or None, bank)  # again from a run's result: that run goes on

        def work():
            return run_semi(ReferenceBank.open(bank.path), unlabelled, run, base=base, cfg=cfg, log=lambda m: None,
                            progress=lambda d, t, text: self._progress_cb(text)(d, t), cancel=self._cancel.is_set,
                            new_run_if_different=True)

        def done(path):
            self._set_checkpoint(str(path))
            self.status.setText(f"learned from {len(todo)} unlabelled slices; checkpoint in use: {path}. "
                                f"Pseudo-labels (not references): {path.parent / 'pseudo'}")

        self._run(work, done, f"learning from {len(todo)} unlabelled slices...")

    def _needed_weights(self) -> list[str]:
        names = {"clip": ["clip-vit-b-32-laion2b"],
                 "dinov2": ["dinov2_vits14"]}.get(self.retriever_combo.currentText(), [])
        if self.proposer_combo.currentText() == "sam2" or self.refine_check.isChecked():
            names.append("sam2.1_hiera_tiny")
        return names

    def download_weights(self) -> None:
        from .. import weights

        missing = [n for n in self._needed_weights() if weights.status(n) != "present"]
        if not missing:
            _notify_info("every checkpoint the current choices need is on this machine")
            return
        if weights.is_offline():
            _notify_error("offline: " + "; ".join(
                f"put {weights.get_entry(n).url} at {weights.where(n)}" for n in missing))
            return

        def work():
            for n in missing:
                weights.fetch(n, progress=self._progress_cb(f"downloading {n}..."), cancel=self._cancel.is_set)
            return missing

        self._run(work, lambda names: self.status.setText(f"downloaded {', '.join(names)}"), "downloading...")

    def _rethreshold(self, value: int) -> None:
        try:
            layer, idx, _ = self._image_slice()
        except MatchsegError:
            return
        prob = self._probabilities.get((layer.name, idx))
        name = f"{layer.name} proposal"
        if prob is None or name not in self.viewer.layers:
            return
        labels = self.viewer.layers[name]
        mask = (prob >= value / 100).astype(np.uint8)
        if idx is None:
            labels.data = mask
        else:
            labels.data[idx] = mask
            labels.refresh()

    def accept_current(self) -> None:
        try:
            bank = self._need_bank()
            layer, idx, image = self._image_slice()
            name = f"{layer.name} proposal"
            labels = self._layer(name if name in self.viewer.layers else self.labels_combo.currentText(), "labels")
            mask = self._labels_slice(labels, idx, image)
            self._store(bank, image, mask, self._name(layer, idx), "accepted_proposal")
            self.accepted.setdefault(layer.name, set()).add(idx)
        except MatchsegError as exc:
            _notify_error(str(exc))

    # ------------------------------------------------------------------ export
    def _browse_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export masks to")
        if folder:
            self.export_accepted(folder)

    def export_accepted(self, folder: str) -> list[Path]:
        """Write every accepted slice's mask as ``<stem>.png|.tif`` in the chosen format; never overwrite."""
        fmt = self.export_format.currentText()
        suffix, value = (".tif", 255) if fmt == "tif-255" else (".png", 1 if fmt == "png-labels" else 255)
        try:
            layer, _, _ = self._image_slice()
            name = f"{layer.name} proposal"
            labels = np.asarray(self._layer(name, "labels").data)
            indices = sorted(self.accepted.get(layer.name, set()), key=lambda i: -1 if i is None else i)
            if not indices:
                raise InputError("nothing accepted yet for this image layer: Accept a proposal first")
            targets = [(Path(folder) / f"{self._name(layer, i)}{suffix}", labels if i is None else labels[i])
                       for i in indices]
            existing = [str(t.name) for t, _ in targets if t.exists()]
            if existing:
                raise InputError(f"{len(existing)} files already exist in {folder} ({name_list(existing)}); "
                                 "nothing was written. Choose an empty folder")
            written = [(write_mask if suffix == ".png" else write_mask_tiff)(t, m != 0, overwrite=False, value=value)
                       for t, m in targets]
        except (MatchsegError, OSError) as exc:
            _notify_error(str(exc))
            return []
        self.status.setText(f"exported {len(written)} masks to {folder}")
        return written
