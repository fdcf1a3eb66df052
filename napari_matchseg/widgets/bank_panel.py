"""The "Reference bank" box: open or create a bank, see its references, add the current slice, remove some."""

from __future__ import annotations

from qtpy.QtWidgets import QAbstractItemView, QFileDialog, QGroupBox, QLabel, QLineEdit, QListWidget, QVBoxLayout

from ..errors import MatchsegError
from ._qt import button, notify_error, reference_item, row, shows_errors, typed_path
from .slices import check_pair, get_layer, labels_slice, slice_name, slice_origin


class BankPanel(QGroupBox):
    def __init__(self, ctx):
        super().__init__("Reference bank")
        self.ctx = ctx
        lay = QVBoxLayout(self)
        self.bank_path = QLineEdit(ctx.state.settings.bank)
        self.bank_path.setPlaceholderText("bank folder (new or existing)")
        browse = button("...", self._browse)
        browse.setMaximumWidth(30)
        open_btn = button("Open / create", lambda: self.open_bank(self.bank_path.text()))
        lay.addLayout(row(self.bank_path, browse, open_btn))
        self.bank_label = QLabel("no bank open")
        lay.addWidget(self.bank_label)
        self.references = QListWidget()
        self.references.setSelectionMode(QAbstractItemView.ExtendedSelection)  # Shift / Ctrl+click: several
        self.references.setMaximumHeight(120)
        lay.addWidget(self.references)
        self.add_btn = button("Add as reference", self.add_current_as_reference,
                              "the current image/slice with its current labels")
        self.undo_remove_btn = button("Undo remove", self.undo_remove, "put the references removed last back")
        self.undo_remove_btn.setEnabled(False)
        lay.addLayout(row(self.add_btn, button("Remove", self.remove_selected,
                                               "remove the selected references from the bank (Undo remove "
                                               "brings them back)"), self.undo_remove_btn))
        self._removed: list[tuple] = []  # (image, mask, record) of the last removal, for Undo remove

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Bank folder")
        if folder:
            self.bank_path.setText(folder)
            self.open_bank(folder)

    def open_bank(self, path: str) -> None:
        """Open (or create) the bank at ``path`` as typed: ``~`` is the home folder and a relative path is taken
        from where napari was started, then kept absolute (settings and checkpoints must mean the same next time)."""
        if not path.strip():
            notify_error("choose a folder for the reference bank first")
            return
        try:
            bank = self.ctx.state.open_bank(typed_path(path))
        except MatchsegError as exc:
            notify_error(str(exc))
            current = self.ctx.state.bank  # unchanged: the label says which bank is still in use
            self.bank_label.setText(f"could not open {path.strip()}; "
                                    + (f"still using {current.path}: {len(current)} references" if current is not None
                                       else "no bank open"))
            return
        self.bank_path.setText(str(bank.path))
        self.ctx.save_settings()
        self.refresh_references()
        self.ctx.propose.show_checkpoint()

    def refresh_references(self) -> None:
        self.references.clear()
        bank = self.ctx.state.bank
        if bank is None:
            self.bank_label.setText("no bank open")
            return
        bank.refresh()
        for ref in bank:
            tag = "accepted" if ref.source == "accepted_proposal" else "manual"
            name = ref.original_name  # said once: only where the file's name is not the id already
            extra = "" if not name or name.replace(" ", "_") == ref.id else f"  {name}"
            self.references.addItem(self.item(f"{ref.id}  [{tag}]{extra}", ref.id))
        self.bank_label.setText(f"{bank.path}: {len(bank)} references")

    def item(self, text: str, ref_id: str):
        return reference_item(text, lambda: self.ctx.state.thumbnail(ref_id))

    @shows_errors
    def add_current_as_reference(self) -> None:
        ctx = self.ctx
        bank = ctx.state.need_bank()
        layer, idx, image = ctx.current_slice()
        labels = get_layer(ctx.viewer, ctx.labels_combo.currentText(), "labels")
        check_pair(layer, labels)
        self.store(bank, image, labels_slice(labels, idx, image, layer), slice_name(layer, idx), "manual",
                   slice_origin(layer, idx))
        ctx.state.effort.record((layer.name, idx))

    def store(self, bank, image, mask, name: str, source: str, origin: dict | None = None) -> None:
        ref, added = bank.add_or_update(image, mask, name=name, source=source, origin=origin)
        self.refresh_references()
        objects = f" ({ref.objects} objects, each its own label value)" if ref.objects else ""
        self.ctx.status.setText(f"added {ref.id} to the bank{objects}" if added else
                                f"updated the mask of {ref.id}{objects}")

    def remove_selected(self) -> None:
        """Remove the selected references; their pixels and records are kept in memory for Undo remove."""
        removed = []
        try:
            bank = self.ctx.state.need_bank()
            for item in self.references.selectedItems():
                ref = bank.get(item.text().split()[0])
                kept = (bank.load_image(ref.id), bank.load_labels(ref.id), ref)  # object ids kept
                bank.remove(ref.id)
                removed.append(kept)
        except MatchsegError as exc:
            notify_error(str(exc))
        if removed:
            self._removed = removed
            self.undo_remove_btn.setEnabled(True)
            self.ctx.status.setText(f"removed {', '.join(r.id for _, _, r in removed)}; Undo remove brings "
                                    f"{'it' if len(removed) == 1 else 'them'} back")
        self.refresh_references()

    @shows_errors
    def undo_remove(self) -> None:
        """Add the last removed references again (same image, mask, name, source and slice origin)."""
        bank = self.ctx.state.need_bank()
        back = [bank.add(image, mask, name=ref.original_name or ref.id, source=ref.source, origin=ref.origin,
                         allow_empty=True, on_duplicate="skip") for image, mask, ref in self._removed]
        self._removed = []
        self.undo_remove_btn.setEnabled(False)
        self.refresh_references()
        self.ctx.status.setText(f"put back {', '.join(r.id for r in back)}")
