"""Regenerate the walk-through screenshots in docs/images from the real plugin.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py

Opens napari, docks "Segment by reference" from the plugin menu, labels four slices of the generated sample
series, proposes a mask for a fifth with the shipped MatchSeg checkpoint, and saves each step.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def wait(widget) -> None:
    while widget.busy:
        QApplication.processEvents()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer()
    viewer.window.resize(1500, 900)
    viewer.open_sample("napari-matchseg", "ultrasound")
    _, w = viewer.window.add_plugin_dock_widget("napari-matchseg", "Segment by reference")
    w.image_combo.setCurrentText("sample ultrasound")
    w.labels_combo.setCurrentText("sample ultrasound labels")
    bank = Path(tempfile.mkdtemp()) / "bank"
    w.open_bank(str(bank))
    for i in range(4):
        viewer.dims.set_current_step(0, i)
        w.add_current_as_reference()
    viewer.screenshot(str(OUT / "1-references.png"), canvas_only=False)
    viewer.dims.set_current_step(0, 6)
    viewer.layers["sample ultrasound labels"].visible = False
    w.propose_current()
    wait(w)
    viewer.screenshot(str(OUT / "2-proposal.png"), canvas_only=False)
    w.accept_current()
    w.suggest_next()
    wait(w)
    viewer.screenshot(str(OUT / "3-accepted-suggest-next.png"), canvas_only=False)
    print(f"screenshots written to {OUT}", file=sys.stderr)
    viewer.close()


if __name__ == "__main__":
    main()
