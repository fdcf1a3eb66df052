"""Export: every accepted slice's mask as a file, in the chosen format, never over an existing file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QComboBox, QFileDialog, QLabel

from ..errors import InputError, MatchsegError, name_list
from ..image_io import write_mask, write_mask_tiff
from ._qt import Panel, button, notify_error, row
from .slices import get_layer, slice_name

FORMATS = {"png-255": (".png", 255), "png-labels": (".png", 1), "tif-255": (".tif", 255)}


class ExportPanel(Panel):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.export_format = QComboBox()
        self.export_format.addItems(list(FORMATS))
        self.export_format.setToolTip("0/255 PNG, label values (0/1) PNG, or 0/255 TIFF")
        self.export_format.setCurrentText(ctx.state.settings.export_format)
        self.export_btn = button("Export accepted masks...", self._browse)
        self.rows.addLayout(row(QLabel("export as"), self.export_format, self.export_btn))

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export masks to")
        if folder:
            self.export_accepted(folder)

    def export_accepted(self, folder: str) -> list[Path]:
        """Write every accepted slice's mask as ``<stem>.png|.tif`` in the chosen format; never overwrite."""
        ctx = self.ctx
        suffix, value = FORMATS[self.export_format.currentText()]
        try:
            layer, _, _ = ctx.current_slice()
            labels = np.asarray(get_layer(ctx.viewer, f"{layer.name} proposal", "labels").data)
            indices = sorted(ctx.state.accepted.get(layer.name, set()), key=lambda i: -1 if i is None else i)
            if not indices:
                raise InputError("nothing accepted yet for this image layer: Accept a proposal first")
            targets = [(Path(folder) / f"{slice_name(layer, i)}{suffix}", labels if i is None else labels[i])
                       for i in indices]
            existing = [str(t.name) for t, _ in targets if t.exists()]
            if existing:
                raise InputError(f"{len(existing)} files already exist in {folder} ({name_list(existing)}); "
                                 "nothing was written. Choose an empty folder")
            written = [(write_mask if suffix == ".png" else write_mask_tiff)(t, m != 0, overwrite=False, value=value)
                       for t, m in targets]
        except (MatchsegError, OSError) as exc:
            notify_error(str(exc))
            return []
        ctx.status.setText(f"exported {len(written)} masks to {folder}")
        return written
