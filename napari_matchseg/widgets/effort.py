"""The effort log behind ``annotations.csv``: per slice, the seconds from when it was first shown to when it was
stored, and the most clicks and boxes it had (Qt-free; the panels report to it, the export reads it)."""

from __future__ import annotations

import time
from collections.abc import Callable

Key = tuple[str, "int | None"]  # (image layer, slice index or None)


class EffortLog:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._start: dict[Key, float] = {}
        self._prompts: dict[Key, tuple[int, int]] = {}
        self.recorded: dict[Key, dict] = {}

    def shown(self, key: Key) -> None:
        """The slice is on screen (or being worked on): its clock starts the first time."""
        self._start.setdefault(key, self._clock())

    def prompts(self, key: Key, clicks: int, boxes: int) -> None:
        """The slice's prompts now (Clear prompts does not lower the count: the most seen is kept)."""
        self.shown(key)
        c, b = self._prompts.get(key, (0, 0))
        self._prompts[key] = (max(c, clicks), max(b, boxes))

    def record(self, key: Key) -> dict:
        """The slice was stored (Accept, Add as reference): freeze its effort for the export."""
        self.shown(key)
        clicks, boxes = self._prompts.get(key, (0, 0))
        self.recorded[key] = {"clicks": clicks, "boxes": boxes,
                              "seconds": round(self._clock() - self._start[key], 1)}
        return self.recorded[key]

    def row(self, key: Key) -> dict:
        return self.recorded.get(key, {"clicks": "", "boxes": "", "seconds": ""})
