"""Embed the image the user is looking at before they ask for it: one background thread, newest request first.

A click, a box or a LiteMedSAM proposal on a new image first waits for its embedding (the encoder: about half a
second to a second and a half on two CPU cores), and a fresh plugin also waits for the model to load. The plugin
hands every image it shows to :class:`BackgroundEmbedder`, which loads the model once and embeds the newest image
it was given (older requests are dropped: only what is on screen matters). The predictor's embedding call is
thread-safe, so a click that comes while its image is being embedded waits for that result instead of computing
it twice. Nothing here imports Qt; the plugin passes a status callback that forwards to the GUI thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np


class BackgroundEmbedder:
    """``get_model()`` returns the shared LiteMedSAM predictor (built on first call, possibly slow);
    ``on_status(text)`` is called from the background thread after each step."""

    def __init__(self, get_model: Callable[[], object], on_status: Callable[[str], None] | None = None):
        self._get_model = get_model
        self._on_status = on_status or (lambda text: None)
        self._cond = threading.Condition()
        self._wanted: tuple[str, np.ndarray] | None = None
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.status = "idle"
        self.embedded: list[str] = []  # names embedded here, in order (for the status line and tests)

    def request(self, name: str, image: np.ndarray | None = None) -> None:
        """Embed ``image`` (shown as ``name``) next, in place of any request not yet started; ``image=None``
        only loads the model."""
        with self._cond:
            if self._closed:
                return
            self._wanted = (name, image)
            self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="matchseg-embedder", daemon=True)
                self._thread.start()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until every request is done (True) or ``timeout`` seconds pass (False)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._wanted is not None or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Stop after the current step (the thread is a daemon: it never keeps napari from quitting)."""
        with self._cond:
            self._closed = True
            self._wanted = None
            self._cond.notify_all()

    def _say(self, text: str) -> None:
        self.status = text
        try:
            self._on_status(text)
        except Exception:  # noqa: BLE001 - a closed widget must not kill the thread
            pass

    def _run(self) -> None:
        model = None
        while True:
            with self._cond:
                while self._wanted is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                name, image = self._wanted
                self._wanted, self._busy = None, True
            try:
                if model is None:
                    self._say("loading LiteMedSAM in the background...")
                    t = time.perf_counter()
                    model = self._get_model()
                    self._say(f"LiteMedSAM ready ({time.perf_counter() - t:.1f} s)")
                if image is not None:
                    if model.has_embedding(image):
                        self._say(f"{name}: ready for clicks")
                    else:
                        self._say(f"{name}: embedding for clicks...")
                        t = time.perf_counter()
                        model.embedding(image)
                        self._say(f"{name}: ready for clicks (embedded in {time.perf_counter() - t:.1f} s)")
                    self.embedded.append(name)
            except Exception as exc:  # noqa: BLE001 - background help only: the user's own action reports errors
                self._say(f"background embedding stopped: {str(exc)[:200]}")
                with self._cond:
                    self._closed, self._busy = True, False
                    self._cond.notify_all()
                return
            with self._cond:
                self._busy = False
                self._cond.notify_all()
