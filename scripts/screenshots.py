"""Regenerate the walk-through screenshots in docs/images from the real plugin.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py

Opens napari, docks "Segment by reference" from the plugin menu, labels four slices of the generated sample
series, proposes a mask for a fifth with the shipped MatchSeg checkpoint, accepts it, asks what to label next,
then learns from the unlabelled slices in the background, and saves each step.
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


def without_toasts(viewer) -> None:
    """Close notification pop-ups (napari's PyQt5 deprecation notice) so they do not cover the picture."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
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
    without_toasts(viewer)
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
    from napari_matchseg.training.semi import SemiConfig

    w.semi_config = SemiConfig(warmup_steps=60, steps_per_round=60)
    w.rounds_spin.setValue(1)
    w.learn_from_unlabelled()
    while w.busy and not (w.status.text().startswith("fine-tuning") and w.progress.value() > 20):
        QApplication.processEvents()
    viewer.screenshot(str(OUT / "4-learn-from-unlabelled.png"), canvas_only=False)
    wait(w)
    print(f"screenshots written to {OUT}", file=sys.stderr)
    viewer.close()


if __name__ == "__main__":
    main()
