"""The review queue: the current image's proposals not yet accepted, the least sure first (Propose all fills it,
Accept + next walks it)."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QListWidget, QListWidgetItem

from ..errors import MatchsegError
from .slices import get_layer, slice_name


class ReviewList(QListWidget):
    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.label = QLabel("to review")
        self.setMaximumHeight(90)
        self.setToolTip("proposals not yet accepted, the least sure first: click one to go there")
        self.itemClicked.connect(self._go_to)

    def refresh(self) -> None:
        """List the current image's queue (hidden when it is empty)."""
        self.clear()
        try:
            layer = get_layer(self.ctx.viewer, self.ctx.image_combo.currentText(), "image")
        except MatchsegError:
            queue = []
        else:
            queue = self.ctx.state.review_queue(layer.name)
            for idx, conf in queue:
                where = "this image" if idx is None else f"{idx + 1}: {slice_name(layer, idx)}"
                item = QListWidgetItem(f"{where}  (sure {conf:.2f})")
                item.setData(Qt.UserRole, -1 if idx is None else idx)
                self.addItem(item)
        self.setVisible(bool(queue))
        self.label.setVisible(bool(queue))
        self.label.setText(f"to review ({len(queue)})")

    def _go_to(self, item) -> None:
        idx = item.data(Qt.UserRole)
        if idx is not None and idx >= 0:
            self.ctx.viewer.dims.set_current_step(0, int(idx))

    def next_to_review(self) -> int | None:
        """The least sure proposal of the current image still to review, other than the slice on screen."""
        try:
            layer, here, _ = self.ctx.current_slice()
        except MatchsegError:
            return None
        queue = self.ctx.state.review_queue(layer.name)
        return next((idx for idx, _ in queue if idx is not None and idx != here), None)
