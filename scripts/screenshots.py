"""Regenerate the walk-through screenshots in docs/images from the real plugin.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python scripts/screenshots.py

Opens napari at 1366 x 768 (a laptop screen), opens a folder of generated ultrasound images of four different sizes
as one series (the plugin's reader), docks "Segment by reference" from the plugin menu, labels four images,
proposes a mask for a fifth with the shipped MatchSeg checkpoint, accepts it, proposes all the others (the review
queue), then learns from the unlabelled images in the background; corrects an image with a box and clicks
(LiteMedSAM); propagates one painted slice through a generated volume; and saves each step. The first picture is
also taken at 1920 x 1080.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import napari
import numpy as np
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
    import os

    os.environ["MATCHSEG_CONFIG_DIR"] = tempfile.mkdtemp()  # the plugin's defaults, not this machine's settings
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer()
    viewer.window.resize(1920, 1080)
    folder, masks = mixed_series(Path(tempfile.mkdtemp()))
    viewer.open(str(folder), plugin="napari-matchseg")
    series = viewer.layers[folder.name]
    labels = np.zeros(series.data.shape[:3], np.uint8)
    for i, m in enumerate(masks):
        labels[i, :m.shape[0], :m.shape[1]] = m  # the true masks, as a person would have painted them
    viewer.add_labels(labels, name=f"{folder.name} labels")
    _, w = viewer.window.add_plugin_dock_widget("napari-matchseg", "Segment by reference")
    w.image_combo.setCurrentText(folder.name)
    w.labels_combo.setCurrentText(f"{folder.name} labels")
    bank = Path(tempfile.mkdtemp()) / "bank"
    w.open_bank(str(bank))
    for i in range(4):
        viewer.dims.set_current_step(0, i)
        w.add_current_as_reference()
    without_toasts(viewer)
    viewer.screenshot(str(OUT / "1-references-1920x1080.png"), canvas_only=False)
    viewer.window.resize(1366, 768)
    QApplication.processEvents()
    viewer.screenshot(str(OUT / "1-references.png"), canvas_only=False)
    viewer.dims.set_current_step(0, 5)
    viewer.layers[f"{folder.name} labels"].visible = False
    w.propose_current()
    wait(w)
    viewer.screenshot(str(OUT / "2-proposal.png"), canvas_only=False)
    w.accept_current()
    w.propose_all()
    wait(w)
    first = w.state.review_queue(folder.name)[0][0]
    viewer.dims.set_current_step(0, first)
    without_toasts(viewer)
    viewer.screenshot(str(OUT / "3-review-queue.png"), canvas_only=False)
    from napari_matchseg.training.semi import SemiConfig

    w.semi_config = SemiConfig(warmup_steps=60, steps_per_round=60)
    w.rounds_spin.setValue(1)
    w.learn_from_unlabelled()
    while w.busy and not (w.status.text().startswith("fine-tuning") and w.progress.value() > 20):
        QApplication.processEvents()
    viewer.screenshot(str(OUT / "4-learn-from-unlabelled.png"), canvas_only=False)
    wait(w)
    prompts(viewer, w)
    propagation(viewer, w)
    print(f"screenshots written to {OUT}", file=sys.stderr)
    viewer.close()


def mixed_series(tmp: Path) -> tuple[Path, list]:
    """A folder of 10 generated ultrasound images of four sizes (cropped and padded copies of the sample series)
    and their masks."""
    from PIL import Image

    from napari_matchseg.sample_data import make_sample

    folder = tmp / "ultrasound"
    folder.mkdir()
    masks = []
    for i, (name, img, mask) in enumerate(make_sample("ultrasound", 10)):
        h, w = ((160, 160), (128, 150), (150, 120), (112, 112))[i % 4]
        cy, cx = np.argwhere(mask).mean(0).astype(int)  # crops around the object keep it in view
        y0, x0 = int(np.clip(cy - h // 2, 0, 160 - h)), int(np.clip(cx - w // 2, 0, 160 - w))
        Image.fromarray(img[y0:y0 + h, x0:x0 + w]).save(folder / f"{name}.png")
        masks.append(mask[y0:y0 + h, x0:x0 + w].astype(np.uint8))
    return folder, masks


def prompts(viewer, w) -> None:
    """A box and a "not this" click on image 8 of the series: LiteMedSAM's mask."""
    name = w.image_combo.currentText()
    viewer.dims.set_current_step(0, 7)
    w.start_prompts()
    truth = np.asarray(viewer.layers[f"{name} labels"].data[7]) > 0
    ys, xs = np.nonzero(truth)
    y0, y1, x0, x1 = ys.min() - 4, ys.max() + 4, xs.min() - 4, xs.max() + 4  # a 3D rectangle: four corners
    viewer.layers[f"{name} box"].add_rectangles(
        np.array([[7, y0, x0], [7, y0, x1], [7, y1, x1], [7, y1, x0]], float))
    wait(w)
    w.add_click(viewer.layers[f"{name} clicks"], (7, float(ys.max()) + 2, float(xs.max()) + 2), False)
    wait(w)
    while w.prompts._dirty or w.busy:
        QApplication.processEvents()
    without_toasts(viewer)
    viewer.screenshot(str(OUT / "5-prompts.png"), canvas_only=False)


def propagation(viewer, w) -> None:
    """One painted slice of a generated volume, propagated with LiteMedSAM."""
    z, y, x = np.mgrid[:24, :128, :128]
    ball = ((z - 11.5) ** 2 + ((y - 70) / 3) ** 2 + ((x - 58) / 3) ** 2) <= 10 ** 2
    rng = np.random.default_rng(0)
    volume = np.clip(60 + 110 * ball + rng.normal(0, 14, ball.shape), 0, 255).astype(np.uint8)
    for layer in list(viewer.layers):
        layer.visible = False
    viewer.add_image(volume, name="volume", scale=(3, 1, 1))
    painted = np.zeros(ball.shape, np.uint8)
    painted[12] = ball[12]
    viewer.add_labels(painted, name="volume labels", scale=(3, 1, 1))
    w.image_combo.setCurrentText("volume")
    w.labels_combo.setCurrentText("volume labels")
    w.proposer_combo.setCurrentText("litemedsam")
    viewer.dims.set_current_step(0, 8)
    w.propagate_volume()
    wait(w)
    viewer.dims.ndisplay = 3
    viewer.camera.angles = (10, -35, 60)
    viewer.camera.zoom *= 0.8
    viewer.layers["volume"].visible = False
    without_toasts(viewer)
    viewer.screenshot(str(OUT / "6-propagate.png"), canvas_only=False)
    viewer.dims.ndisplay = 2


if __name__ == "__main__":
    main()
