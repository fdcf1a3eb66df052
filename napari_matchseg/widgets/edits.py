"""The plugin's masks written into a Labels layer without losing the user's edits, and undoable (Ctrl+Z).

Every write goes through napari's ``Labels.data_setitem``, which records it in the layer's undo history. The mask
the plugin last wrote on each slice is remembered: a slice whose pixels differ from it (or that the user painted
before the plugin wrote anything) is *edited*, and only an explicit action replaces it.
"""

from __future__ import annotations

import numpy as np


class MaskWriter:
    def __init__(self):
        self._shown: dict[tuple, np.ndarray] = {}  # (labels layer, slice) -> what the plugin wrote there

    @staticmethod
    def _slice(labels, idx: int | None) -> np.ndarray:
        data = np.asarray(labels.data)
        return data if idx is None or data.ndim == 2 else data[idx]

    def edited(self, labels, idx: int | None) -> bool:
        """Has the user changed this slice since the plugin last wrote it (or painted it before that)?"""
        current = self._slice(labels, idx)
        shown = self._shown.get((labels.name, idx))
        return bool(current.any()) if shown is None else not np.array_equal(current, shown)

    def with_edits(self, labels, idx: int | None, mask: np.ndarray) -> np.ndarray:
        """``mask`` with the user's changes to this slice carried over: what they painted since the plugin last
        wrote it stays painted (with its value), what they erased stays erased."""
        current = self._slice(labels, idx)
        shown = self._shown.get((labels.name, idx))
        before = np.zeros_like(current) if shown is None else shown
        out = np.asarray(mask).astype(current.dtype).copy()
        painted, erased = (current != before) & (current != 0), (current == 0) & (before != 0)
        out[painted] = current[painted]
        out[erased] = 0
        return out

    def write(self, labels, idx: int | None, mask: np.ndarray) -> None:
        """Replace the slice by ``mask`` as one undoable step."""
        current = self._slice(labels, idx)
        mask = np.asarray(mask).astype(current.dtype)
        changed = np.nonzero(current != mask)
        if changed[0].size:
            where = changed if idx is None or np.asarray(labels.data).ndim == 2 else \
                (np.full(changed[0].shape, idx), *changed)
            labels.data_setitem(where, mask[changed])
        self._shown[(labels.name, idx)] = mask.copy()
