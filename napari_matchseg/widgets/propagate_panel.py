"""Propagate: a volume's labelled slices carried to the empty ones, slice to slice, with the model chosen here
(LiteMedSAM from the previous slice by default, whatever proposes the 2D proposals) and its stop thresholds."""

from __future__ import annotations

import dataclasses

import numpy as np
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QLabel

from ..bank import ReferenceBank
from ..errors import MatchsegError
from ..propagation import PROPAGATION_PROPOSER, PropagationSettings
from ..proposers import PROPOSERS
from ._qt import Panel, button, row, shows_errors
from .slices import series_info, check_pair, get_layer, spatial_shape


def _spin(value: float, tip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(0.0, 1.0)
    spin.setSingleStep(0.05)
    spin.setDecimals(2)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


class PropagatePanel(Panel):
    def __init__(self, ctx):
        super().__init__(ctx)
        s, d = ctx.state.settings, PropagationSettings()
        self.propagate_combo = QComboBox()
        self.propagate_combo.addItems([PROPAGATION_PROPOSER] + [n for n in PROPOSERS.names()
                                                                if n != PROPAGATION_PROPOSER])
        self.propagate_combo.setCurrentText(s.propagation_proposer if s.propagation_proposer in PROPOSERS
                                            else PROPAGATION_PROPOSER)
        self.propagate_combo.setToolTip("the model that carries each slice's mask to the next one; litemedsam "
                                        "(the default) takes the previous slice's mask as its box")
        self.propagate_btn = button("Propagate", self.propagate_volume,
                                    "fill the empty slices of the labels layer from its labelled ones, slice to "
                                    "slice, until the structure ends (a volume or stack)")
        self.rows.addLayout(row(self.propagate_btn, QLabel("with"), self.propagate_combo))
        self.min_quality_spin = _spin(d.min_quality, "stop a walk where the model's own quality estimate (its "
                                                     "predicted IoU: litemedsam, context, sam2) drops below this")
        self.min_confidence_spin = _spin(d.min_confidence, "stop a walk where the mean foreground probability "
                                                           "(models without a quality estimate) drops below this")
        self.rows.addLayout(row(QLabel("stop below quality"), self.min_quality_spin))
        self.rows.addLayout(row(QLabel("or confidence"), self.min_confidence_spin))

    def settings(self) -> PropagationSettings:
        return PropagationSettings(min_quality=self.min_quality_spin.value(),
                                   min_confidence=self.min_confidence_spin.value()).check()

    @shows_errors
    def propagate_volume(self) -> None:
        """The labels layer's labelled slices propagated through the image stack (docs/volumes.md), each label
        value as an object of its own. Only slices that are empty in the labels layer are written: nothing painted
        there is ever replaced."""
        from ..propagation import propagate_objects

        ctx = self.ctx
        layer = get_layer(ctx.viewer, ctx.image_combo.currentText(), "image")
        labels_layer = get_layer(ctx.viewer, ctx.labels_combo.currentText(), "labels")
        check_pair(layer, labels_layer)
        if series_info(layer) is not None:
            raise MatchsegError(f"{layer.name!r} is a series of separate images of different sizes, not a volume: "
                                "propose them (Propose all) instead of propagating")
        volume, labels = np.asarray(layer.data), np.asarray(labels_layer.data)
        if len(spatial_shape(layer)) != 3 or labels.shape != spatial_shape(layer):
            raise MatchsegError(f"Propagate works on a stack or volume and a labels layer of its shape; "
                                f"{layer.name!r} is {spatial_shape(layer)}, {labels_layer.name!r} is {labels.shape}")
        ctx.save_settings()
        model = self.propagate_combo.currentText()
        c = dataclasses.replace(ctx.propose.choices(need_bank=False), proposer=model, refiner="none")
        tasks, state, settings = ctx.tasks, ctx.state, self.settings()
        bank_path = state.bank.path if state.bank is not None and len(state.bank) else None
        axis = self._slice_axis()  # the axis the viewer steps through: slices are the planes on screen
        before = np.moveaxis(labels.copy(), axis, 0)
        planes = np.moveaxis(volume, axis, 0)
        title = PROPOSERS.get(model).label

        def work():
            tasks.report(0, 0, f"loading {title}...")
            bank = ReferenceBank.open(bank_path) if bank_path is not None else None
            return propagate_objects(state.pipeline(c), planes, before, bank=bank, settings=settings,
                                     progress=tasks.progress_callback(f"propagating with {title}..."),
                                     cancel=tasks.cancel_event.is_set)

        def show(result):
            now = np.moveaxis(np.asarray(labels_layer.data), axis, 0)  # painted meanwhile: left alone too
            written = [z for z in result.proposed_slices() if not np.any(now[z]) and not np.any(before[z])]
            where = list(np.nonzero(result.labels[written])) if written else []
            if where and where[0].size:  # one step of napari's undo for the whole propagation
                values = result.labels[written][tuple(where)]
                where[0] = np.asarray(written)[where[0]]
                where.insert(axis, where.pop(0))  # back to the layer's own axis order
                labels_layer.data_setitem(tuple(where), values)
            objects = f" ({len(result.objects)} objects, each its own value)" if len(result.objects) > 1 else ""
            ctx.status.setText(f"{title} propagated to {len(written)} slices (axis {axis}) of {labels_layer.name!r}"
                               f"{objects}" + (f"; {'; '.join(result.notes)}" if result.notes else "")
                               + ". Correct any slice and Propagate again")

        tasks.run(work, show, f"propagating with {title}...")

    def _slice_axis(self) -> int:
        """The volume axis that is not on screen (the one the slider steps through); 0 in a 3D view."""
        dims = self.ctx.viewer.dims
        hidden = [a - (dims.ndim - 3) for a in dims.not_displayed if a >= dims.ndim - 3]
        return hidden[-1] if dims.ndisplay == 2 and len(hidden) == 1 else 0
