"""Export: every labelled slice's mask (hand-labelled references and accepted proposals) as a file, in the chosen
format, with ``annotations.csv`` saying where each came from; never over an existing file."""

from __future__ import annotations

from pathlib import Path

import csv
import io

from qtpy.QtWidgets import QComboBox, QFileDialog, QLabel

from ..errors import InputError, MatchsegError, name_list
from ..fsutil import atomic_write_text
from ..image_io import write_mask, write_mask_tiff
from ._qt import Panel, button, notify_error, row
from .slices import all_slices, get_layer, slice_name

FORMATS = {"png-255": (".png", 255), "png-labels": (".png", 1), "tif-255": (".tif", 255)}


class ExportPanel(Panel):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.export_format = QComboBox()
        self.export_format.addItems(list(FORMATS))
        self.export_format.setToolTip("0/255 PNG, label values (0/1) PNG, or 0/255 TIFF")
        self.export_format.setCurrentText(ctx.state.settings.export_format)
        self.export_btn = button("Export labelled masks...", self._browse,
                                 "every slice of this image layer that is in the bank (labelled by hand or an "
                                 "accepted proposal), with annotations.csv")
        self.rows.addLayout(row(QLabel("export as"), self.export_format, self.export_btn))

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export masks to")
        if folder:
            self.export_labelled(folder)

    def export_labelled(self, folder: str) -> list[Path]:
        """Write the bank's mask of every slice of the current image layer that is a reference (labelled by hand
        or accepted) as ``<stem>.png|.tif`` in the chosen format, and ``annotations.csv`` (file, source,
        reference, edited before Accept); never over an existing file."""
        ctx = self.ctx
        suffix, value = FORMATS[self.export_format.currentText()]
        try:
            bank = ctx.state.need_bank()
            layer = get_layer(ctx.viewer, ctx.image_combo.currentText(), "image")
            images = all_slices(layer)
            stack = len(images) > 1
            found = [(i if stack else None, bank.find_image(im)) for i, im in enumerate(images)]
            found = [(i, rid) for i, rid in found if rid is not None]
            if not found:
                raise InputError("no slice of this image layer is labelled yet: Add as reference or Accept first")
            targets = [(Path(folder) / f"{slice_name(layer, i)}{suffix}", i, bank.get(rid)) for i, rid in found]
            log = Path(folder) / "annotations.csv"
            existing = [t.name for t, _, _ in targets if t.exists()] + ([log.name] if log.exists() else [])
            if existing:
                raise InputError(f"{len(existing)} files already exist in {folder} ({name_list(existing)}); "
                                 "nothing was written. Choose an empty folder")
            write = write_mask if suffix == ".png" else write_mask_tiff
            written = [write(t, bank.load_mask(ref.id) != 0, overwrite=False, value=value) for t, _, ref in targets]
            edited = ctx.state.edited_on_accept.get(layer.name, {})
            buf = io.StringIO()
            out = csv.writer(buf)
            out.writerow(["file", "slice", "source", "reference", "edited_before_accept"])
            for t, i, ref in targets:
                flag = "" if ref.source != "accepted_proposal" or i not in edited else int(edited[i])
                out.writerow([t.name, "" if i is None else i, ref.source, ref.id, flag])
            atomic_write_text(log, buf.getvalue(), overwrite=False)
        except (MatchsegError, OSError) as exc:
            notify_error(str(exc))
            ctx.status.setText(f"export failed: {exc}")
            return []
        ctx.status.setText(f"exported {len(written)} masks and annotations.csv to {folder}")
        return written
