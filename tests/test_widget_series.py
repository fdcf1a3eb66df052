"""A folder of images of different sizes as one series in the plugin (napari under xvfb-run)."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_matchseg.bank import ReferenceBank
from napari_matchseg.image_io import read_image, read_mask
from napari_matchseg.widgets import ReferenceAnnotator

pytestmark = pytest.mark.gui


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Five images of three sizes, gray and colour: cells_00/01 (128 x 128 RGB), ultrasound_00/01 (160 x 160), a
    100 x 120 crop; their masks under masks/."""
    from napari_matchseg.sample_data import write_sample

    write_sample(tmp_path / "s", n_per_kind=2)
    folder = tmp_path / "s" / "images"
    small = np.array(Image.open(folder / "ultrasound_01.png"))[:100, :120]
    Image.fromarray(small).save(folder / "ultrasound_small.png")
    mask = np.array(Image.open(tmp_path / "s" / "masks" / "ultrasound_01.png"))[:100, :120]
    Image.fromarray(mask).save(tmp_path / "s" / "masks" / "ultrasound_small.png")
    return folder


@pytest.fixture
def series(make_napari_viewer, mixed_folder, tmp_path, tiny_ckpt):
    """The folder opened in napari (by this plugin's reader), the widget on it and the true masks painted in a
    labels layer of the series' frame."""
    viewer = make_napari_viewer()
    viewer.open(str(mixed_folder), plugin="napari-matchseg")
    layer = viewer.layers["images"]
    truth = np.zeros(layer.data.shape[:3], np.uint8)
    for i, f in enumerate(layer.metadata["files"]):
        m = read_mask(mixed_folder.parent / "masks" / Path(f).name)
        truth[i, :m.shape[0], :m.shape[1]] = m
    viewer.add_labels(truth, name="truth")
    w = ReferenceAnnotator(viewer)
    w.settings.checkpoint = str(tiny_ckpt)
    w.image_combo.setCurrentText("images")
    w.labels_combo.setCurrentText("truth")
    w.open_bank(str(tmp_path / "bank"))
    viewer.dims.set_current_step(0, 0)
    return viewer, w, layer


def test_a_mixed_size_folder_is_one_series_stepped_through_one_image_at_a_time(series, mixed_folder):
    viewer, w, layer = series
    assert len([ly for ly in viewer.layers if ly.name != "truth"]) == 1  # one layer, not one per image
    assert layer.data.shape == (5, 160, 160, 3) and layer.rgb
    assert w.where.text() == "image 1 of 5: cells_00 (128 x 128)" and not w.prev_btn.isEnabled()
    w.next_btn.click()
    w.next_btn.click()
    w.next_btn.click()
    assert viewer.dims.current_step[0] == 3 and w.where.text() == "image 4 of 5: ultrasound_01 (160 x 160)"
    w.next_btn.click()
    assert w.where.text() == "image 5 of 5: ultrasound_small (120 x 100)" and not w.next_btn.isEnabled()
    _, idx, image = w.current_slice()  # the image the plugin works on is the file, exactly
    assert idx == 4 and image.shape == (100, 120) and image.dtype == np.uint8
    assert np.array_equal(image, read_image(mixed_folder / "ultrasound_small.png"))
    w.prev_btn.click()
    assert viewer.dims.current_step[0] == 3


def test_references_proposals_accept_and_export_cover_the_series_at_each_images_own_size(series, mixed_folder,
                                                                                          qtbot, tmp_path):
    viewer, w, layer = series
    for i in (0, 2):  # a colour and a gray image labelled by hand
        viewer.dims.set_current_step(0, i)
        w.add_current_as_reference()
    bank = ReferenceBank.open(tmp_path / "bank")
    assert len(bank) == 2
    assert w.references.item(0).text() == "cells_00  [manual]"  # its name once, not id and name
    for ref in bank:  # each reference is its file's own image and mask, not the padded slice
        f = mixed_folder / f"{ref.original_name}.png"
        assert np.array_equal(bank.load_image(ref.id), read_image(f))
        assert np.array_equal(bank.load_mask(ref.id) > 0, read_mask(mixed_folder.parent / "masks" / f.name))
    w.k_spin.setValue(2)
    w.propose_all()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    proposal = viewer.layers["images proposal"]
    assert proposal.data.shape == (5, 160, 160)
    assert {k[1] for k in w.state.probabilities if k[0] == "images"} == {1, 3, 4}  # the rest of the series
    assert w.state.probabilities[("images", 4)].shape == (100, 120)
    assert not proposal.data[4, 100:].any() and not proposal.data[4, :, 120:].any()  # nothing in the padding
    viewer.dims.set_current_step(0, 4)
    edited = proposal.data.copy()
    edited[4, 10:30, 10:30] = 1  # the user paints, then accepts
    proposal.data = edited
    assert w.accept_current()
    bank = ReferenceBank.open(tmp_path / "bank")
    small = bank.find_image(read_image(mixed_folder / "ultrasound_small.png"))
    assert small is not None and bank.load_mask(small).shape == (100, 120) and bank.load_mask(small)[10:30, 10:30].all()
    out = tmp_path / "export"
    written = w.export_labelled(str(out))
    assert [p.name for p in written] == ["cells_00.png", "ultrasound_00.png", "ultrasound_small.png"]
    assert [np.array(Image.open(p)).shape for p in written] == [(128, 128), (160, 160), (100, 120)]
    # another image accepted later: exporting again updates the earlier export (new file, log row added)
    viewer.dims.set_current_step(0, 3)
    assert w.accept_current()
    again = w.export_labelled(str(out))
    assert [p.name for p in again] == ["ultrasound_01.png"] and "3 unchanged" in w.status.text()
    rows = list(csv.DictReader(open(out / "annotations.csv")))
    assert [r["file"] for r in rows] == ["cells_00.png", "ultrasound_00.png", "ultrasound_01.png",
                                         "ultrasound_small.png"]
    # a file that is not from an export of these images is never written over
    (out / "annotations.csv").unlink()
    assert w.export_labelled(str(out)) == [] and "not from an earlier export" in w.status.text()
    assert np.array(Image.open(out / "cells_00.png")).shape == (128, 128)


def test_a_series_is_not_a_volume(series, tmp_path, monkeypatch):
    viewer, w, layer = series
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    viewer.layers["truth"].data[1] = 0  # an empty slice Propagate would otherwise fill
    w.propagate_volume()
    assert len(errors) == 1 and "not a volume" in errors[0] and not viewer.layers["truth"].data[1].any()
    assert w.save_volume_mask(str(tmp_path / "v.nii.gz")) is None and not (tmp_path / "v.nii.gz").exists()
    assert "not a volume" in w.status.text()


def test_the_dock_fits_a_laptop_screen_with_its_everyday_actions_in_view(make_napari_viewer, qtbot):
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-matchseg", "ultrasound")
    _, w = viewer.window.add_plugin_dock_widget("napari-matchseg", "Segment by reference")
    viewer.window._qt_window.resize(1366, 768)
    for _ in range(5):
        QApplication.processEvents()
    port = w.scroll.viewport()
    content = w.scroll.widget()
    assert content.minimumSizeHint().width() <= port.width(), (content.minimumSizeHint().width(), port.width())
    assert content.width() <= port.width()  # no part of a panel hidden to the right
    for b in (w.propose_btn, w.accept_btn, w.accept_next_btn, w.next_btn, w.propose_all_btn):
        top = b.mapTo(port, QPoint(0, 0))
        assert b.isVisible() and top.y() + b.height() <= port.height(), (b.text(), top.y(), port.height())
        assert top.x() + b.width() <= port.width(), (b.text(), top.x(), b.width(), port.width())
    assert not w.options.isVisible()  # the model's options are folded away until asked for
    w.options_btn.click()
    assert w.options.isVisible() and w.retriever_combo.isVisible()


def test_propose_all_fills_a_review_queue_least_sure_first_and_accept_next_walks_it(series, qtbot):
    viewer, w, layer = series
    for i in (0, 2):
        viewer.dims.set_current_step(0, i)
        w.add_current_as_reference()
    assert w.review.isHidden()  # nothing to review yet
    w.k_spin.setValue(2)
    w.propose_all()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    queue = w.state.review_queue("images")
    sure = [c for _, c in queue]
    assert {i for i, _ in queue} == {1, 3, 4} and sure == sorted(sure)
    assert w.review.count() == 3 and not w.review.isHidden() and w.review.label.text() == "to review (3)"
    assert w.review.item(0).text().startswith(f"{queue[0][0] + 1}: ")
    w.review.itemClicked.emit(w.review.item(2))  # a click on an entry goes there
    assert viewer.dims.current_step[0] == queue[2][0]
    viewer.dims.set_current_step(0, queue[0][0])
    w.accept_and_next()  # Alt+Shift+A: accepted, and on to the least sure of the rest
    assert viewer.dims.current_step[0] == queue[1][0] and w.review.count() == 2
    w.accept_and_next()
    assert viewer.dims.current_step[0] == queue[2][0] and w.review.count() == 1
    assert len(ReferenceBank.open(w.bank.path)) == 4
