"""Export: every labelled slice's mask (hand-labelled references and accepted proposals) as a file, in the chosen
format, with ``annotations.csv`` saying where each came from; a second export of the same images updates the
first, and nothing else is ever written over."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QComboBox, QFileDialog, QLabel

from ..errors import InputError, MatchsegError
from ..export_log import LOG_NAME, file_sha256, plan_export
from ..fsutil import atomic_write_text
from ..fsutil import atomic_write_bytes
from ..image_io import encode_labels_png, encode_mask_png, write_mask_tiff
from ._qt import Panel, button, notify_error, row
from .slices import all_slices, check_pair, get_layer, series_info, slice_name, spatial_shape

FORMATS = {"png-255": (".png", 255), "png-labels": (".png", 1), "tif-255": (".tif", 255)}


class ExportPanel(Panel):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.export_format = QComboBox()
        self.export_format.addItems(list(FORMATS))
        self.export_format.setToolTip("0/255 PNG (every object as foreground), label values PNG (0 background, "
                                      "each object its own value, 1 for one object), or 0/255 TIFF")
        self.export_format.setCurrentText(ctx.state.settings.export_format)
        self.export_btn = button("Export masks...", self._browse,
                                 "every slice of this image layer that is in the bank (labelled by hand or an "
                                 "accepted proposal), with annotations.csv")
        self.rows.addLayout(row(QLabel("export as"), self.export_format))
        self.rows.addLayout(row(self.export_btn))
        self.volume_btn = button("Save volume mask...", self._browse_volume,
                                 "the labels of this volume (all its objects, label values kept) as one NIfTI or "
                                 "TIFF stack, with the source's affine, header and spacing")
        volume_row = row(self.volume_btn)
        volume_row.addStretch()  # its own width, not the dock's
        self.rows.addLayout(volume_row)

    def _browse_volume(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the volume mask", "", "NIfTI (*.nii.gz *.nii);;TIFF (*.tif)")
        if path:
            self.save_volume_mask(path)

    def save_volume_mask(self, path: str) -> Path | None:
        """The chosen labels of the current image (a stack or volume) as one mask volume at ``path``
        (``.nii.gz``, ``.nii`` or ``.tif``) with the source volume's geometry; never over an existing file."""
        from .writer import write_labels_volume

        ctx = self.ctx
        try:
            layer = get_layer(ctx.viewer, ctx.image_combo.currentText(), "image")
            labels = get_layer(ctx.viewer, ctx.labels_combo.currentText(), "labels")
            check_pair(layer, labels)
            if series_info(layer) is not None:
                raise InputError(f"{layer.name!r} is a series of separate images, not a volume: use Export masks... "
                                 "(one file per image)")
            if len(spatial_shape(layer)) != 3 or labels.data.shape != spatial_shape(layer):
                raise InputError(f"Save volume mask needs a stack or volume and labels of its shape; {layer.name!r} "
                                 f"is {spatial_shape(layer)}, {labels.name!r} is {labels.data.shape}")
            volume = (layer.metadata or {}).get("volume")  # the image's geometry, whatever made the labels
            meta = {"metadata": {**(labels.metadata or {}), **({"volume": volume} if volume else {})},
                    "scale": tuple(layer.scale)}
            written = Path(write_labels_volume(path, labels.data, meta)[0])
        except (MatchsegError, OSError) as exc:
            notify_error(str(exc))
            ctx.status.setText(f"save failed: {exc}")
            return None
        ctx.status.setText(f"saved {labels.name!r} as {written}")
        return written

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export masks to")
        if folder:
            self.export_labelled(folder)

    def export_labelled(self, folder: str) -> list[Path]:
        """Write the bank's mask of every slice of the current image layer that is a reference (labelled by hand
        or accepted) as ``<stem>.png|.tif`` in the chosen format, and ``annotations.csv`` (file, source,
        reference, edited before Accept, effort, sha256). Into a folder that holds an earlier export of these
        images it updates that export (:mod:`napari_matchseg.export_log`); it never writes over anything else."""
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
            plan = plan_export(folder, [t.name for t, _, _ in targets])
            edited = ctx.state.edited_on_accept.get(layer.name, {})
            written, unchanged, rows = [], 0, []
            for t, i, ref in targets:
                again = t.name in plan.replace
                if suffix == ".tif":
                    written.append(write_mask_tiff(t, bank.load_mask(ref.id), overwrite=again, value=value))
                    continue
                data = encode_labels_png(bank.load_labels(ref.id)) if value == 1 else \
                    encode_mask_png(bank.load_mask(ref.id), value)
                if again and t.read_bytes() == data:
                    unchanged += 1  # the same file as last time: it stays as it is
                else:
                    written.append(atomic_write_bytes(t, data, overwrite=again))
                flag = "" if ref.source != "accepted_proposal" or i not in edited else int(edited[i])
                effort = ctx.state.effort.row((layer.name, i))
                objects = ref.objects or int(ref.foreground_fraction > 0)
                rows.append({"file": t.name, "slice": "" if i is None else i, "source": ref.source,
                             "reference": ref.id, "objects": objects, "edited_before_accept": flag, **effort,
                             "sha256": file_sha256(t)})
            atomic_write_text(Path(folder) / LOG_NAME, plan.csv_text(rows), overwrite=True)
        except (MatchsegError, OSError) as exc:
            notify_error(str(exc))
            ctx.status.setText(f"export failed: {exc}")
            return []
        kept = f", {unchanged} unchanged" if unchanged else ""
        updated = len(plan.replace) - unchanged
        again = f" ({updated} updated from the earlier export{kept})" if plan.replace else ""
        ctx.status.setText(f"exported {len(written)} masks and {LOG_NAME} to {folder}{again}")
        return written
