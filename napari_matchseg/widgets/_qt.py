"""Small Qt helpers shared by the panels: buttons, rows, notifications, typed paths, reference thumbnails."""

from __future__ import annotations

import functools
import os

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..errors import MatchsegError


class Panel(QWidget):
    """A borderless part of the dock: its rows in ``self.rows``, the annotator (state, tasks, viewer) as ``ctx``."""

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.rows = QVBoxLayout(self)
        self.rows.setContentsMargins(0, 0, 0, 0)


def narrow_combos(parent: QWidget, chars: int = 6) -> None:
    """Let every drop-down under ``parent`` shrink below its longest entry (shown in full when it opens), so a
    long layer or model name never widens the dock."""
    from qtpy.QtWidgets import QComboBox

    for combo in parent.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(chars)


class StatusLine(QLabel):
    """One line that never grows the dock: long text is elided to the width, the full text is the tooltip and
    what :meth:`text` returns."""

    def __init__(self, text: str = ""):
        super().__init__()
        self._full = ""
        self.setWordWrap(False)
        self.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        self._full = str(text)
        self.setToolTip(self._full if len(self._full) > 40 else "")
        self._elide()

    def text(self) -> str:
        return self._full

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        width = max(self.width() - 4, 60)
        QLabel.setText(self, self.fontMetrics().elidedText(self._full, Qt.ElideRight, width))

    def minimumSizeHint(self):  # noqa: N802 - Qt's name
        hint = super().minimumSizeHint()
        hint.setWidth(60)
        hint.setHeight(self.fontMetrics().height() + 2)  # one line, whatever the text
        return hint

    def sizeHint(self):  # noqa: N802 - Qt's name
        hint = super().sizeHint()
        hint.setHeight(self.fontMetrics().height() + 2)
        return hint


def button(text: str, slot, tip: str = "") -> QPushButton:
    b = QPushButton(text)
    b.clicked.connect(lambda *_: slot())
    if tip:
        b.setToolTip(tip)
    return b


def row(*widgets) -> QHBoxLayout:
    layout = QHBoxLayout()
    for w in widgets:
        layout.addWidget(w)
    return layout


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def shows_errors(method):
    """A user action whose core errors become a notification (the message as the core wrote it), never a crash."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except MatchsegError as exc:
            notify_error(str(exc))
            return None

    return wrapper


def typed_path(text: str) -> str:
    """A path as a person types or pastes it: spaces around it dropped, ``~`` the home folder, made absolute (a
    relative one is taken from where napari was started) so that it means the same in the settings next time."""
    return os.path.abspath(os.path.expanduser(text.strip()))


def reference_item(text: str, thumbnail):
    """A list entry with a thumbnail (``thumbnail()`` gives an RGB uint8 array; a failure leaves just the text)."""
    from qtpy.QtGui import QIcon, QImage, QPixmap
    from qtpy.QtWidgets import QListWidgetItem

    item = QListWidgetItem(text)
    try:
        thumb = thumbnail()
        h, w = thumb.shape[:2]
        qimg = QImage(thumb.data, w, h, 3 * w, QImage.Format_RGB888).copy()
        item.setIcon(QIcon(QPixmap.fromImage(qimg)))
    except (MatchsegError, OSError):
        pass  # a reference that cannot be read still gets its line
    return item
