"""Small Qt helpers shared by the panels: buttons, rows, notifications, typed paths, reference thumbnails."""

from __future__ import annotations

import functools
import os

from qtpy.QtWidgets import QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from ..errors import MatchsegError


class Panel(QWidget):
    """A borderless part of the dock: its rows in ``self.rows``, the annotator (state, tasks, viewer) as ``ctx``."""

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.rows = QVBoxLayout(self)
        self.rows.setContentsMargins(0, 0, 0, 0)


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
