"""Long work off the GUI thread, in one place: a worker per task, a progress bar, Cancel, errors as notifications."""

from __future__ import annotations

import threading
import time

from qtpy.QtCore import QObject, Signal

from ..errors import Cancelled, MatchsegError
from ._qt import notify_error, notify_info


class _Signals(QObject):
    progress = Signal(int, int, str)


class TaskRunner:
    """Runs one task at a time. ``progress`` (a QProgressBar), ``cancel_button`` and ``status`` (a QLabel) are the
    panel's; a task reports through :meth:`progress_callback` and stops at the next report once cancelled."""

    def __init__(self, progress, cancel_button, status):
        self.progress, self.cancel_button, self.status = progress, cancel_button, status
        self.busy = False
        self.cancel_event = threading.Event()
        self._worker = None
        self._signals = _Signals()
        self._signals.progress.connect(self._on_progress)

    def run(self, fn, on_done, label: str) -> None:
        if self.busy:
            notify_info("busy: wait for the current task or cancel it")
            return
        from napari.qt.threading import create_worker

        self.cancel_event.clear()
        self.busy = True
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.cancel_button.setEnabled(True)
        self.status.setText(label)
        # errors go to our handler (a notification), never re-raised into the event loop
        self._worker = create_worker(fn, _connect={"returned": on_done, "errored": self._on_error,
                                                   "finished": self._on_finished})

    def report(self, done: int, total: int, text: str = "") -> None:
        """From the worker thread: show progress (thread-safe through a Qt signal)."""
        self._signals.progress.emit(done, total, text)

    def progress_callback(self, text: str):
        """A ``(done, total)`` callback for the core that shows ``text`` and raises Cancelled once cancelled."""
        def cb(done: int, total: int) -> None:
            if self.cancel_event.is_set():
                raise Cancelled("cancelled by the user")
            self.report(done, total, text)
        return cb

    def rate_callback(self, unit: str = "steps"):
        """A ``(done, total, text)`` callback that adds the rate and the time left: "12/200 steps, 3.1 steps/s,
        about 1 min left" (from the first report on, so loading time does not distort the rate)."""
        first: list[tuple[float, int]] = []

        def cb(done: int, total: int, text: str = "") -> None:
            now = time.monotonic()
            if not first:
                first.append((now, done))
            t0, d0 = first[0]
            rate = (done - d0) / (now - t0) if now > t0 and done > d0 else 0.0
            extra = f"{done}/{total} {unit}"
            if rate > 0 and total > done:
                extra += f", {rate:.1f} {unit}/s, about {eta_text((total - done) / rate)} left"
            self.progress_callback(f"{text or 'working...'} {extra}")(done, total)
        return cb

    def cancel(self) -> None:
        self.cancel_event.set()
        self.status.setText("cancelling...")

    def _on_progress(self, done: int, total: int, text: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        if text:
            self.status.setText(text)

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, Cancelled):
            self.status.setText(f"cancelled: {exc}")
            return
        notify_error(str(exc) if isinstance(exc, MatchsegError) else f"{type(exc).__name__}: {exc}")
        self.status.setText(f"error: {exc}")

    def _on_finished(self) -> None:
        self.busy = False
        self.progress.setVisible(False)
        self.cancel_button.setEnabled(False)
        self._worker = None


def eta_text(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
