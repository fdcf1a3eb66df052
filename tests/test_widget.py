"""The "Segment by reference" widget driven in a real napari viewer (xvfb-run)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_matchseg.bank import ReferenceBank
from napari_matchseg.widgets import ReferenceAnnotator

pytestmark = pytest.mark.gui



def add_references(viewer, w, n: int) -> None:
    """Add the first ``n`` slices of the current stack as references (their labels as painted)."""
    for i in range(n):
        viewer.dims.set_current_step(0, i)
        w.add_current_as_reference()


def label_then_propose(viewer, w, qtbot, references: int, at: int) -> None:
    """Add the first slices as references, then propose for slice ``at`` and wait for it."""
    add_references(viewer, w, references)
    viewer.dims.set_current_step(0, at)
    w.propose_current()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)


def propagate_in(viewer, qtbot, image: str, labels: str, model: str | None = None):
    """A new widget on ``image`` and ``labels`` presses Propagate (with ``model``, else the default);
    (widget, the labels afterwards)."""
    w = ReferenceAnnotator(viewer)
    w.image_combo.setCurrentText(image)
    w.labels_combo.setCurrentText(labels)
    if model is not None:
        w.propagate_combo.setCurrentText(model)
    w.propagate_volume()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    return w, viewer.layers[labels].data


@pytest.fixture
def annotator(make_napari_viewer, tmp_path, tiny_ckpt):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-matchseg", "ultrasound")
    widget = ReferenceAnnotator(viewer)
    widget.settings.checkpoint = str(tiny_ckpt)
    widget.image_combo.setCurrentText("sample ultrasound")
    widget.labels_combo.setCurrentText("sample ultrasound labels")
    widget.open_bank(str(tmp_path / "bank"))
    return viewer, widget


def test_segment_menu_holds_segment_by_reference(make_napari_viewer):
    from napari._app_model import get_app_model

    make_napari_viewer()
    app = get_app_model()
    subs = [i for i in app.menus.get_menu("napari/layers/segment") if getattr(i, "submenu", None)]
    assert [i.title for i in subs] == ["Segment by reference"]
    titles = [i.command.title for i in app.menus.get_menu(subs[0].submenu)]
    assert titles and titles[0].startswith("Segment by reference")


def test_menu_and_widget_are_contributed():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("napari-matchseg")
    assert [s.label for s in mf.contributions.submenus] == ["Segment by reference"]
    assert "napari/layers/segment" in mf.contributions.menus
    assert [w.display_name for w in mf.contributions.widgets] == ["Segment by reference"]


def test_label_propose_edit_accept_export(annotator, qtbot, tmp_path):
    viewer, w = annotator
    for i in range(4):  # label a few slices
        viewer.dims.set_current_step(0, i)
        w.add_current_as_reference()
    assert len(ReferenceBank.open(tmp_path / "bank")) == 4 and w.references.count() == 4
    viewer.dims.set_current_step(0, 6)
    w.k_spin.setValue(3)
    w.propose_current()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    proposal = viewer.layers["sample ultrasound proposal"]
    assert proposal.data.shape == (8, 160, 160)
    assert len(w.last_matches) == 3 and w.matches.count() == 3
    assert "sample ultrasound probability" in viewer.layers
    prob = viewer.layers["sample ultrasound probability"].data[6]
    assert prob.max() > 0 and (proposal.data[6] == (prob >= 0.5)).all()
    w.threshold.setValue(90)  # live re-threshold
    assert (proposal.data[6] == (prob >= 0.9)).all()
    edited = proposal.data.copy()  # the user paints
    edited[6, 40:80, 40:80] = 1
    proposal.data = edited
    w.accept_current()
    bank = ReferenceBank.open(tmp_path / "bank")
    assert len(bank) == 5
    accepted = [r for r in bank if r.source == "accepted_proposal"]
    assert len(accepted) == 1 and bank.load_mask(accepted[0].id)[40:80, 40:80].all()
    written = w.export_labelled(str(tmp_path / "export"))  # the hand-labelled slices and the accepted one
    assert [p.name for p in written] == [f"sample ultrasound_{i:04d}.png" for i in (0, 1, 2, 3, 6)]
    assert set(np.unique(np.array(Image.open(written[-1])))) == {0, 255}
    assert np.array_equal(np.array(Image.open(written[-1])) > 0, bank.load_mask(accepted[0].id) > 0)
    log = (tmp_path / "export" / "annotations.csv").read_text().splitlines()
    assert log[0] == "file,slice,source,reference,objects,edited_before_accept,clicks,boxes,seconds,sha256" \
        and len(log) == 6
    assert log[1].startswith("sample ultrasound_0000.png,0,manual,")
    assert log[5].split(",")[:8] == ["sample ultrasound_0006.png", "6", "accepted_proposal", accepted[0].id, "1",
                                     "1", "0", "0"] and float(log[5].split(",")[8]) >= 0
    # the same export again: an update of the earlier one, nothing changed, nothing rewritten
    assert w.export_labelled(str(tmp_path / "export")) == [] and "5 unchanged" in w.status.text()
    (tmp_path / "export" / "sample ultrasound_0001.png").write_bytes(b"someone else's file")
    assert w.export_labelled(str(tmp_path / "export")) == []  # never written over a changed file
    assert w.status.text().startswith("export failed:") and "changed after the export" in w.status.text()


def test_mirror_option_averages_both_views(annotator, qtbot, tmp_path):
    from napari_matchseg.proposers.matchseg import MatchSegPredictor

    viewer, w = annotator
    add_references(viewer, w, 3)
    viewer.dims.set_current_step(0, 5)
    w.k_spin.setValue(3)
    w.mirror_check.setChecked(True)
    w.propose_current()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    got = viewer.layers["sample ultrasound probability"].data[5]
    bank = ReferenceBank.open(tmp_path / "bank")
    sup = [bank.load_image(m.id) for m in w.last_matches], [bank.load_mask(m.id) for m in w.last_matches]
    [(p, p_mirror)] = MatchSegPredictor(w.settings.checkpoint, device="cpu").predict_with_mirror(
        [viewer.layers["sample ultrasound"].data[5]], [sup])
    assert np.abs(p - p_mirror).max() > 1e-3  # the two views differ, so the test can tell them apart
    np.testing.assert_allclose(got, 0.5 * (p + p_mirror), atol=1e-4)
    w.proposer_combo.setCurrentText("sam2")
    assert not w.mirror_check.isEnabled()
    w._save_settings()
    assert w.settings.mirror_tta


def test_cancel_and_bad_inputs_notify_instead_of_crashing(annotator, qtbot, monkeypatch):
    viewer, w = annotator
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    w.propose_current()
    assert errors and "bank is empty" in errors[-1]
    viewer.add_image(np.zeros((3, 4, 20, 20), np.uint8), name="volume4d")
    w.image_combo.setCurrentText("volume4d")
    w.add_current_as_reference()
    assert "expected a 2D image or a stack" in errors[-1]
    viewer.add_labels(np.zeros((8, 150, 150), np.uint8), name="wrong")
    w.image_combo.setCurrentText("sample ultrasound")
    w.labels_combo.setCurrentText("wrong")
    w.add_current_as_reference()
    assert "(150, 150)" in errors[-1] and "(160, 160)" in errors[-1]
    w.labels_combo.setCurrentText("sample ultrasound labels")
    viewer.add_labels(np.ones((8, 160, 160), np.uint8), name="painted elsewhere")
    w.labels_combo.setCurrentText("painted elsewhere")
    w.accept_current()  # no proposal for this image: never the labels picker's mask instead
    assert "has no proposal to accept" in errors[-1] and len(w.state.bank) == 0  # nothing stored
    w.labels_combo.setCurrentText("sample ultrasound labels")
    add_references(viewer, w, 3)
    viewer.dims.set_current_step(0, 5)
    w.propose_current()
    w.cancel()  # right away: the worker stops at its next check, before the bank is embedded
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert w.status.text().startswith("cancelled")
    assert "sample ultrasound proposal" not in viewer.layers
    w.propose_current()  # and the widget still works afterwards
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert "sample ultrasound proposal" in viewer.layers


def test_series_propose_all_and_suggest_next(annotator, qtbot, tmp_path):
    viewer, w = annotator
    for i in (0, 1):
        viewer.dims.set_current_step(0, i)
        w.add_current_as_reference()
    w.k_spin.setValue(2)
    w.suggest_next()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert w.status.text().startswith("label slice") and len(w.suggestions) == 6
    assert viewer.dims.current_step[0] == w.suggestions[0].index not in (0, 1)
    w.propose_all()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    assert w.status.text() == "proposed 6 of 6 unlabelled slices"
    assert {k[1] for k in w._probabilities} == {2, 3, 4, 5, 6, 7}
    assert not w.references.item(0).icon().isNull()  # thumbnails
    here = viewer.dims.current_step[0]
    queue = [i for i, _ in w.state.review_queue("sample ultrasound") if i != here]
    w.accept_and_next()  # Alt+Shift+A: the proposal joins the bank, the least sure proposal left is shown
    assert here in w.accepted["sample ultrasound"] and viewer.dims.current_step[0] == queue[0]
    w.state.probabilities.clear()  # no proposals left to review: Accept + next goes to the suggested slice
    w.accept_and_next()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert queue[0] in w.accepted["sample ultrasound"] and len(w.suggestions) == 4
    assert viewer.dims.current_step[0] == w.suggestions[0].index not in (here, queue[0])


def test_folder_reader_and_labels_writer(tmp_path):
    from napari_matchseg.reader import get_folder_reader
    from napari_matchseg.sample_data import write_sample
    from napari_matchseg.widgets import write_labels

    write_sample(tmp_path / "s", n_per_kind=2)
    (mixed, meta, _), = get_folder_reader(str(tmp_path / "s" / "images"))(str(tmp_path / "s" / "images"))
    sizes = meta["metadata"]["series"]["sizes"]  # two sizes, gray and colour: one series
    assert mixed.shape == (4, 160, 160, 3) and sizes == [[128, 128]] * 2 + [[160, 160]] * 2
    (tmp_path / "same").mkdir()
    for f in sorted((tmp_path / "s" / "images").glob("ultrasound_*.png")):
        (tmp_path / "same" / f.name).write_bytes(f.read_bytes())
    (stack, meta, kind), = get_folder_reader(str(tmp_path / "same"))(str(tmp_path / "same"))
    assert stack.shape == (2, 160, 160) and [Path(f).name for f in meta["metadata"]["files"]] == [
        "ultrasound_00.png", "ultrasound_01.png"]
    out = write_labels(str(tmp_path / "m.png"), np.ones((2, 20, 20), np.uint8), {})
    assert [Path(p).name for p in out] == ["m_0000.png", "m_0001.png"]
    with pytest.raises(FileExistsError):
        write_labels(str(tmp_path / "m.png"), np.ones((2, 20, 20), np.uint8), {})


def test_export_formats(annotator, qtbot, tmp_path):
    import tifffile

    viewer, w = annotator
    viewer.dims.set_current_step(0, 0)
    w.add_current_as_reference()
    viewer.dims.set_current_step(0, 3)
    w.propose_current()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    w.accept_current()
    w.export_format.setCurrentText("png-labels")
    png, _ = w.export_labelled(str(tmp_path / "labels"))
    assert set(np.unique(np.array(Image.open(png)))) <= {0, 1}
    w.export_format.setCurrentText("tif-255")
    tif, _ = w.export_labelled(str(tmp_path / "tif"))
    assert tif.suffix == ".tif" and set(np.unique(tifffile.imread(tif))) <= {0, 255}


@pytest.mark.slow
def test_sam2_proposer_in_the_widget(annotator, qtbot, tmp_path):
    from napari_matchseg.sam2_model import build_sam2_model

    viewer, w = annotator
    torch.manual_seed(0)
    ckpt = tmp_path / "sam2_random.pt"
    torch.save({"model": build_sam2_model(image_size=256, random_init=True, device="cpu").state_dict()}, ckpt)
    w.settings.checkpoint, w.settings.sam2_image_size = str(ckpt), 256
    w.proposer_combo.setCurrentText("sam2")
    for i in (0, 1):
        viewer.dims.set_current_step(0, i)
        w.add_current_as_reference()
    viewer.dims.set_current_step(0, 4)
    w.k_spin.setValue(2)
    w.propose_current()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    assert w.status.text().startswith("proposal from 2 references"), w.status.text()
    assert viewer.layers["sample ultrasound probability"].data[4].shape == (160, 160)


@pytest.mark.slow
def test_whole_loop_on_real_images_with_the_shipped_checkpoint(make_napari_viewer, qtbot, tmp_path):
    from conftest import load_real, real_ids
    from napari_matchseg.metrics import dice

    ids = [i for i in real_ids("wbc", "train") if i.startswith("d1_")][:10]  # d1 images are all 120 x 120
    pairs = [load_real("wbc", i) for i in ids]
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([p[0] for p in pairs]), name="wbc", rgb=True)
    viewer.add_labels(np.stack([p[1] for p in pairs]).astype(np.uint8), name="truth")
    w = ReferenceAnnotator(viewer)
    assert w.settings.checkpoint == ""  # the shipped checkpoint
    w.image_combo.setCurrentText("wbc")
    w.labels_combo.setCurrentText("truth")
    w.open_bank(str(tmp_path / "bank"))
    label_then_propose(viewer, w, qtbot, references=6, at=8)
    proposal = viewer.layers["wbc proposal"].data[8]
    assert dice(proposal > 0, pairs[8][1]) > 0.7  # a real proposal, not noise
    w.refiner_combo.setCurrentText("litemedsam")  # SAM-Match with LiteMedSAM's real weights
    assert w.needed_weights() == ["litemedsam"]
    for _ in range(2):
        w.propose_current()
        qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
        assert "refined with" in w.status.text() or "not refined" in w.status.text(), w.status.text()
    assert len(w.state._refiners) == 1  # built once, kept for the next proposal
    refined = viewer.layers["wbc proposal"].data[8]
    assert dice(refined > 0, pairs[8][1]) > 0.7
    w.refiner_combo.setCurrentText("none")
    w.propose_current()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    np.testing.assert_array_equal(viewer.layers["wbc proposal"].data[8], proposal)
    w.accept_current()
    assert len(ReferenceBank.open(tmp_path / "bank")) == 7
    *_, out = w.export_labelled(str(tmp_path / "export"))  # six references, then the accepted slice
    assert out.name == "wbc_0008.png"
    np.testing.assert_array_equal(np.array(Image.open(out)) > 0, proposal > 0)


def test_a_bank_typed_relative_or_with_a_tilde_is_kept_absolute(annotator, tmp_path, monkeypatch):
    _, w = annotator
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    w.open_bank("  ~/banks/mine \n")  # pasted with spaces around it
    assert w.bank.path == tmp_path / "home" / "banks" / "mine" and (w.bank.path / "bank.json").is_file()
    assert not (Path.cwd() / "~").exists()
    monkeypatch.chdir(tmp_path)
    w.open_bank("relative-bank")
    assert w.bank.path == tmp_path / "relative-bank" and w.bank_path.text() == str(tmp_path / "relative-bank")
    from napari_matchseg.settings import Settings

    assert Settings.load().bank == str(tmp_path / "relative-bank")  # reopened from anywhere next time, even empty


@pytest.mark.slow
def test_finetune_in_the_background_switches_checkpoint(annotator, qtbot, tmp_path):
    viewer, w = annotator
    add_references(viewer, w, 3)
    seen = []
    w.tasks._signals.progress.connect(lambda d, t, text: seen.append(text))
    w.finetune()
    assert w.busy and w.cancel_btn.isEnabled()
    qtbot.waitUntil(lambda: not w.busy, timeout=180_000)
    assert any(re.search(r"fine-tuning\.\.\. \d+/200 steps, [\d.]+ steps/s, about \d+ (s|min) left", t)
               for t in seen), seen[-3:]  # the rate and the time left
    tuned = tmp_path / "bank" / "finetuned" / "matchseg_finetuned.safetensors"
    assert w.settings.checkpoint == str(tuned) and tuned.is_file(), w.status.text()
    assert w.checkpoint_label.text() == "matchseg_finetuned.safetensors"  # which MatchSeg proposes is shown


def test_the_checkpoint_in_use_is_shown_chosen_and_reset(annotator, tmp_path, tiny_ckpt, monkeypatch):
    from napari_matchseg.checkpoint import build_matchseg, save_checkpoint
    from napari_matchseg.settings import Settings

    _, w = annotator
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    assert w.checkpoint_label.text() == "tiny.safetensors" and w.checkpoint_label.toolTip() == str(tiny_ckpt)
    tuned = save_checkpoint(tmp_path / "tuned.safetensors", build_matchseg(tiny_ckpt)[0],
                            {"finetuned_on": str(tmp_path / "bank")})
    w.use_checkpoint(str(tuned))
    assert w.checkpoint_label.text() == "tuned.safetensors" and Settings.load().checkpoint == str(tuned)
    w.open_bank(str(tmp_path / "other-bank"))  # the checkpoint stays in use, and says it was tuned elsewhere
    assert w.checkpoint_label.text() == "tuned.safetensors (tuned on another bank)"
    w.use_checkpoint("")  # "Use shipped"
    assert w.settings.checkpoint == "" and w.checkpoint_label.text() == "shipped checkpoint"
    (tmp_path / "half.safetensors").write_bytes(tuned.read_bytes()[:200])  # a half-written file
    w.use_checkpoint(str(tmp_path / "half.safetensors"))
    assert "not a readable safetensors checkpoint" in errors[-1] and w.settings.checkpoint == ""  # refused
    w.use_checkpoint(str(tuned))
    tuned.unlink()  # gone since: said so, with the way out
    w.open_bank(str(tmp_path / "bank"))
    assert w.checkpoint_label.text() == "tuned.safetensors (missing: use the shipped one or choose another)"


def test_learn_from_unlabelled_slices_in_the_background(annotator, qtbot, tmp_path):
    from napari_matchseg.pseudo_labels import PseudoLabelStore
    from napari_matchseg.training.semi import SemiConfig

    viewer, w = annotator
    add_references(viewer, w, 3)
    n_slices = viewer.layers["sample ultrasound"].data.shape[0]
    w.semi_config = SemiConfig(warmup_steps=1, steps_per_round=2, labelled_batch=2, unlabelled_batch=2)
    w.rounds_spin.setValue(1)
    w.learn_from_unlabelled()
    assert w.busy and w.cancel_btn.isEnabled()
    qtbot.waitUntil(lambda: not w.busy, timeout=180_000)
    run = tmp_path / "bank.semi" / "sample_ultrasound"
    assert w.settings.checkpoint == str(run / "matchseg-semi.safetensors"), w.status.text()
    store = PseudoLabelStore(run / "pseudo" / "round-0")
    assert len(store) == n_slices - 3 and len(w.bank) == 3  # pseudo-labels stay out of the bank
    assert json.loads((run / "config.json").read_text())["semi"]["teacher"] == "ema"  # the default: mean teacher
    first = (run / "matchseg-semi.safetensors").read_bytes()
    w.rounds_spin.setValue(2)  # one more round: the same run goes on, its 1-round result is kept
    w.learn_from_unlabelled()
    qtbot.waitUntil(lambda: not w.busy, timeout=180_000)
    assert w.settings.checkpoint == str(run / "matchseg-semi.safetensors"), w.status.text()
    assert (run / "matchseg-semi.1-rounds.safetensors").read_bytes() == first
    assert len(PseudoLabelStore(run / "pseudo" / "round-1")) == n_slices - 3 and w.settings.semi_rounds == 2
    viewer.dims.set_current_step(0, 3)
    w.add_current_as_reference()  # the bank changed: a second run goes to a new folder, the first is kept
    w.learn_from_unlabelled()
    qtbot.waitUntil(lambda: not w.busy, timeout=180_000)
    assert w.settings.checkpoint == str(run.with_name("sample_ultrasound-2") / "matchseg-semi.safetensors")
    assert (run / "matchseg-semi.safetensors").is_file()


def test_missing_weights_offline_say_where_to_put_them(annotator, monkeypatch):
    _, w = annotator
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    w.retriever_combo.setCurrentText("dinov2")
    w.proposer_combo.setCurrentText("sam2")
    w.download_weights()  # MATCHSEG_OFFLINE=1 in the tests
    assert errors and "dinov2_vits14_pretrain.pth" in errors[-1] and "sam2.1_hiera_tiny.pt" in errors[-1]


def test_propagate_a_volume_from_one_painted_slice_never_replacing_painted_pixels(make_napari_viewer, qtbot,
                                                                                  tmp_path):
    import nibabel as nib

    from napari_matchseg.metrics import dice
    from conftest import sphere

    img, gt = sphere()
    nib.save(nib.Nifti1Image(img.transpose(2, 1, 0), np.diag([0.8, 0.8, 3.0, 1])), str(tmp_path / "ball.nii.gz"))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "ball.nii.gz"), plugin="napari-matchseg")
    assert layer.data.shape == img.shape and tuple(layer.scale) == pytest.approx((3.0, 0.8, 0.8))
    painted = np.zeros(gt.shape, np.uint8)
    painted[12] = gt[12] * 2  # the user's label value is kept
    painted[3, 0, 0] = 2  # a stray painted pixel on a slice of its own: that slice is "labelled" and kept as is
    viewer.add_labels(painted.copy(), name="mine", scale=layer.scale)
    w, out = propagate_in(viewer, qtbot, "ball", "mine")  # no bank: the previous slice's mask is the prompt
    assert w.propagate_combo.currentText() == "litemedsam"  # the default, whatever proposes 2D images
    assert w.proposer_combo.currentText() == "matchseg"
    assert w.status.text().startswith("LiteMedSAM propagated to"), w.status.text()
    assert "from slice 12 up: " in w.status.text() and "from slice 12 down: " in w.status.text()
    np.testing.assert_array_equal(out[12], painted[12])
    np.testing.assert_array_equal(out[3], painted[3])
    assert set(np.unique(out)) <= {0, 2} and dice(out[4:21] > 0, gt[4:21]) > 0.9
    assert not out[22:].any()
    viewer.layers["mine"].undo()  # Ctrl+Z takes the whole propagation back, the painted slices stay
    np.testing.assert_array_equal(viewer.layers["mine"].data, painted)


def test_clicks_and_a_box_segment_an_image_with_an_empty_bank(make_napari_viewer, qtbot):
    from conftest import load_real, real_ids
    from napari_matchseg.metrics import dice

    image, gt = load_real("busi", real_ids("busi", "test", n=1, groups=("benign",))[0])
    viewer = make_napari_viewer()
    viewer.add_image(image, name="us")
    w = ReferenceAnnotator(viewer)  # no bank at all: prompts alone make the first masks
    w.image_combo.setCurrentText("us")
    w.start_prompts()
    clicks, boxes = viewer.layers["us clicks"], viewer.layers["us box"]
    assert viewer.layers.selection.active is clicks and clicks.mode == "pan_zoom"
    ys, xs = np.nonzero(gt)
    boxes.add_rectangles(np.array([[ys.min(), xs.min()], [ys.max(), xs.max()]], float))
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    first = viewer.layers["us proposal"].data > 0
    assert dice(first, gt) > 0.85, w.status.text()
    assert "1 box(es)" in w.status.text() and viewer.layers.selection.active is clicks  # clicks stay active

    class Click:  # what napari hands a mouse callback: a press, then a release without moving
        type, position, button, modifiers = "mouse_press", (float(ys.mean()), float(xs.mean())), 1, ["Shift"]

    event = Click()
    callback = w.prompts._on_click(clicks, event)
    next(callback)
    event.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(callback)
    assert len(clicks.data) == 1 and not clicks.features["positive"][0]  # Shift+click: "not the object"
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    second = viewer.layers["us proposal"].data > 0
    assert second.sum() < first.sum() and "1 negative" in w.status.text()
    w.add_click(clicks, (float(ys.min()), float(xs.min())), positive=True)
    w.add_click(clicks, (float(ys.max()), float(xs.max())), positive=False)  # while the first one runs
    qtbot.waitUntil(lambda: not w.busy and not w.prompts._dirty, timeout=60_000)
    assert "1 positive and 2 negative" in w.status.text(), w.status.text()  # the later change was not lost
    w.clear_prompts()
    assert len(clicks.data) == 0 and len(boxes.data) == 0


def test_the_shown_image_is_embedded_in_the_background_so_a_first_box_waits_for_no_encoder(
        make_napari_viewer, qtbot):
    from conftest import load_real, real_ids
    from napari_matchseg.settings import Settings

    settings = Settings.load()
    settings.background_embedding = True  # the default (tests turn it off in conftest)
    settings.save()
    (a, gt), (b, _), (c, _) = [load_real("busi", r) for r in real_ids("busi", "test", n=3)]
    viewer = make_napari_viewer()
    for name, img in (("a", a), ("b", b), ("c", c)):
        viewer.add_image(img, name=name)
    w = ReferenceAnnotator(viewer)
    viewer.layers.selection.active = viewer.layers["a"]  # the user selects "a": the dock follows
    assert w.image_combo.currentText() == "a"
    assert w.background.wait_idle(120), w.background.status
    model = w.state.prompt_model()
    assert model.has_embedding(a) and not model.has_embedding(b)
    qtbot.waitUntil(lambda: "a: ready for clicks" in w.prompts.background_status.text(), timeout=5_000)
    encodings = model.encodings
    w.start_prompts()
    ys, xs = np.nonzero(gt)
    viewer.layers["a box"].add_rectangles(np.array([[ys.min(), xs.min()], [ys.max(), xs.max()]], float))
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert viewer.layers["a proposal"].data.any() and model.encodings == encodings  # the decoder only
    viewer.layers.selection.active = viewer.layers["b"]
    assert w.background.wait_idle(60) and model.has_embedding(b)
    w.prompts.background_check.setChecked(False)  # off: nothing more is prepared, and it is remembered
    assert Settings.load().background_embedding is False
    viewer.layers.selection.active = viewer.layers["c"]
    assert w.background.wait_idle(60) and not model.has_embedding(c)


def test_the_in_context_proposer_proposes_from_the_bank_and_takes_clicks_with_its_references(
        make_napari_viewer, qtbot, tmp_path):
    from conftest import load_real, real_ids
    from napari_matchseg.metrics import dice

    groups = ("benign", "malignant")
    bank = ReferenceBank.create(tmp_path / "bank")
    bank.add_many((*load_real("busi", rid), rid) for rid in real_ids("busi", "train", n=3, groups=groups))
    image, gt = load_real("busi", real_ids("busi", "val", n=1, groups=groups)[0])
    viewer = make_napari_viewer()
    viewer.add_image(image, name="us")
    w = ReferenceAnnotator(viewer)
    w.open_bank(str(tmp_path / "bank"))
    w.image_combo.setCurrentText("us")
    w.proposer_combo.setCurrentText("context")
    assert w.retriever_combo.currentText() == "medsam"  # its own retriever: LiteMedSAM's embedding, encoded anyway
    w.propose_current()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    first = viewer.layers["us proposal"].data > 0
    assert dice(first, gt) > 0.5, w.status.text()
    w.start_prompts()
    clicks = viewer.layers["us clicks"]
    from scipy import ndimage as ndi

    far = ndi.distance_transform_edt(~first)
    y, x = np.unravel_index(int(far.argmax()), far.shape)
    w.add_click(clicks, (float(y), float(x)), positive=False)  # "not the object" far from the proposal
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert w.status.text().startswith("in-context (LiteMedSAM) from 3 references and your prompts"), \
        w.status.text()
    after = viewer.layers["us proposal"].data > 0  # the references still count: the map is refitted with one more
    assert dice(after, first) > 0.99 and not after[y, x]  # negative cell, far away; its boundary may move a pixel
    assert len(w.state._proposers) == 1 and w.state.prompt_model() is w.state.pipeline(
        w.propose.choices()).proposer.predictor  # one LiteMedSAM: each image is encoded once


def test_the_retriever_follows_the_proposer_unless_the_user_chose_one(make_napari_viewer):
    w = ReferenceAnnotator(make_napari_viewer())
    w.proposer_combo.setCurrentText("matchseg")
    w.retriever_combo.setCurrentText("handcrafted")
    w.proposer_combo.setCurrentText("context")
    assert w.retriever_combo.currentText() == "medsam"
    w.proposer_combo.setCurrentText("matchseg")
    assert w.retriever_combo.currentText() == "handcrafted"
    w.retriever_combo.setCurrentText("clip")  # the user's own choice stays whatever the proposer
    w.proposer_combo.setCurrentText("context")
    assert w.retriever_combo.currentText() == "clip"
    assert w.propose.choices(need_bank=False).retriever == "clip"


def test_a_hand_edit_survives_the_next_click(make_napari_viewer, qtbot):
    from conftest import load_real, real_ids

    image, gt = load_real("busi", real_ids("busi", "test", n=1, groups=("benign",))[0])
    viewer = make_napari_viewer()
    viewer.add_image(image, name="us")
    w = ReferenceAnnotator(viewer)
    w.image_combo.setCurrentText("us")
    w.start_prompts()
    clicks, boxes = viewer.layers["us clicks"], viewer.layers["us box"]
    ys, xs = np.nonzero(gt)
    boxes.add_rectangles(np.array([[ys.min(), xs.min()], [ys.max(), xs.max()]], float))
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    proposal = viewer.layers["us proposal"]
    first = proposal.data > 0
    edited = proposal.data.copy()  # the user paints a second object away from the first and erases a corner
    far = np.zeros_like(first)
    far[:12, :12] = True
    assert not (far & first).any()
    edited[far] = 1
    inside = np.argwhere(first)[0]
    edited[inside[0], inside[1]] = 0
    proposal.data = edited
    w.add_click(clicks, (float(ys.mean()), float(xs.mean())), positive=True)
    qtbot.waitUntil(lambda: not w.busy and not w.prompts._dirty, timeout=60_000)
    after = proposal.data
    assert after[far].all() and after[inside[0], inside[1]] == 0  # painted stays painted, erased stays erased
    assert "positive" in w.status.text() or "prompts" in w.status.text(), w.status.text()


def test_each_click_keeps_its_own_colour(make_napari_viewer):
    """A new click never recolours the earlier ones (napari paints selected points with the current colour)."""
    from napari_matchseg.widgets.prompt_panel import NEGATIVE, POSITIVE
    from qtpy.QtGui import QColor

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 40), np.uint8), name="img")
    w = ReferenceAnnotator(viewer)
    w.image_combo.setCurrentText("img")
    clicks, _ = w.prompts.prompt_layers(viewer.layers["img"])
    clicks.events.data.disconnect(w.prompts._on_prompts_changed)  # the colours only: no model
    for i, positive in enumerate((True, False, True, False)):
        w.add_click(clicks, (5.0 + 5 * i, 5.0), positive=positive)
    want = [QColor(c).getRgbF()[:3] for c in (POSITIVE, NEGATIVE, POSITIVE, NEGATIVE)]
    np.testing.assert_allclose(clicks.face_color[:, :3], want, atol=1e-6)
    assert clicks.features["positive"].tolist() == [True, False, True, False]


def test_the_dock_fits_a_1366x768_window_with_every_button_reachable(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QPushButton

    viewer = make_napari_viewer(show=True)
    w = ReferenceAnnotator(viewer)
    viewer.window.add_dock_widget(w, area="right", name="Segment by reference")
    window = viewer.window._qt_window
    window.resize(1366, 768)
    qtbot.wait(200)
    assert window.height() <= 768 and w.height() < 768
    hint = w.minimumSizeHint()
    w.status.setText("error: " + "a very long message that would wrap to many lines " * 12)
    assert w.minimumSizeHint() == hint and w.status.toolTip().startswith("error: a very long")
    assert w.status.text().endswith("many lines ")  # the full text, not the elided one
    buttons = w.scroll.widget().findChildren(QPushButton)
    assert len(buttons) >= 15
    viewport = w.scroll.viewport()
    for b in buttons:
        w.scroll.ensureWidgetVisible(b)
        qtbot.wait(1)
        top_left = b.mapTo(viewport, b.rect().topLeft())
        assert viewport.rect().contains(top_left) or not b.isVisibleTo(w), b.text()
    assert not w.cancel_btn.isAncestorOf(w.scroll) and w.scroll.isAncestorOf(w.propose_btn)
    assert w.threshold_value.text() == f"{w.threshold.value() / 100:.2f}"
    w.threshold.setValue(37)
    assert w.threshold_value.text() == "0.37"


def test_an_edit_survives_a_threshold_change_and_a_new_proposal_and_ctrl_z_undoes(annotator, qtbot):
    viewer, w = annotator
    label_then_propose(viewer, w, qtbot, references=3, at=5)
    proposal = viewer.layers["sample ultrasound proposal"]
    proposed = proposal.data[5].copy()
    w.threshold.setValue(30)  # not edited yet: re-thresholded live, as one undoable step
    prob = viewer.layers["sample ultrasound probability"].data[5]
    assert ((prob >= 0.3) != (prob >= 0.5)).any()  # so the new threshold does change pixels
    np.testing.assert_array_equal(proposal.data[5], prob >= 0.3)
    proposal.undo()
    np.testing.assert_array_equal(proposal.data[5], proposed)  # Ctrl+Z brings the previous mask back
    w.threshold.setValue(50)
    # the user paints a square and erases a corner (napari's brush writes through data_setitem, as here)
    ys, xs = np.mgrid[20:50, 20:50]
    proposal.data_setitem((np.full(ys.size, 5), ys.ravel(), xs.ravel()), 1)
    edited = proposal.data[5].copy()
    w.threshold.setValue(80)
    np.testing.assert_array_equal(proposal.data[5], edited)
    assert "your edits" in w.status.text()
    w.propose_current()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    np.testing.assert_array_equal(proposal.data[5], edited)  # the first Propose keeps them and says so
    assert "has your edits, kept" in w.status.text()
    w.propose_current()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert not np.array_equal(proposal.data[5], edited)  # asked twice: replaced...
    proposal.undo()
    np.testing.assert_array_equal(proposal.data[5], edited)  # ...and Ctrl+Z restores the edit


def test_a_tuned_matchseg_checkpoint_does_not_stop_another_proposer(annotator, tiny_ckpt):
    viewer, w = annotator  # its settings hold a MatchSeg checkpoint (as after Fine-tune or Learn)
    w.proposer_combo.setCurrentText("litemedsam")
    pipeline = w.state.pipeline(w.choices())
    assert pipeline.proposer.name == "litemedsam" and "checkpoint" not in pipeline.config.options
    w.proposer_combo.setCurrentText("matchseg")
    assert w.state.pipeline(w.choices()).config.options["checkpoint"] == str(tiny_ckpt)


def test_the_plugins_keys_collide_with_no_napari_key_and_run_their_actions(make_napari_viewer, monkeypatch):
    from napari.layers import Image, Labels, Points, Shapes
    from napari.settings import get_settings
    from napari.utils.key_bindings import coerce_keybinding

    viewer = make_napari_viewer()
    w = ReferenceAnnotator(viewer)
    taken = {coerce_keybinding(k) for cls in (Image, Labels, Points, Shapes) for k in cls.class_keymap}
    taken |= {coerce_keybinding(str(b)) for binds in get_settings().shortcuts.shortcuts.values() for b in binds}
    called = []
    for key, action in w.KEYS.items():
        assert coerce_keybinding(key) not in taken, key
        monkeypatch.setattr(w.propose, action, lambda a=action: called.append(a))
        viewer.keymap[coerce_keybinding(key)](viewer)
    assert called == list(w.KEYS.values())


def test_propagate_keeps_each_painted_object_apart_with_its_own_value(make_napari_viewer, qtbot):
    from conftest import two_balls
    from napari_matchseg.metrics import dice

    img, truth = two_balls()
    viewer = make_napari_viewer()
    viewer.add_image(img, name="balls")
    painted = np.zeros(truth.shape, np.uint8)
    painted[12] = truth[12] * 3  # values 3 and 6
    viewer.add_labels(painted.copy(), name="mine")
    w, out = propagate_in(viewer, qtbot, "balls", "mine", model="matchseg")
    assert "(2 objects, each its own value)" in w.status.text(), w.status.text()
    assert set(np.unique(out)) == {0, 3, 6}
    assert dice(out == 3, truth == 1) > 0.85 and dice(out == 6, truth == 2) > 0.85
    np.testing.assert_array_equal(out[12], painted[12])
    viewer.layers["mine"].undo()  # one step of undo takes both objects back
    np.testing.assert_array_equal(viewer.layers["mine"].data, painted)


def test_propagate_follows_the_axis_the_viewer_steps_through(make_napari_viewer, qtbot):
    from conftest import sphere
    from napari_matchseg.metrics import dice

    img, gt = sphere()
    img, gt = np.moveaxis(img, 0, 2), np.moveaxis(gt, 0, 2)  # the 24 "slices" are now the last axis
    viewer = make_napari_viewer()
    viewer.add_image(img, name="ball")
    painted = np.zeros(gt.shape, np.uint8)
    painted[:, :, 12] = gt[:, :, 12]
    viewer.add_labels(painted.copy(), name="mine")
    viewer.dims.order = (2, 0, 1)  # the slider steps through the last axis
    w, out = propagate_in(viewer, qtbot, "ball", "mine", model="matchseg")  # another model than the default
    assert w.status.text().startswith("MatchSeg propagated to") and "axis 2" in w.status.text(), w.status.text()
    assert dice(out > 0, gt) > 0.9 and not out[:, :, :2].any()


def test_remove_reference_can_be_undone(annotator, tmp_path):
    viewer, w = annotator
    add_references(viewer, w, 3)
    bank = ReferenceBank.open(tmp_path / "bank")
    before = {r.original_name: (bank.load_mask(r.id), r.source) for r in bank}
    w.references.item(1).setSelected(True)
    w.references.item(2).setSelected(True)
    w.remove_selected()
    assert len(ReferenceBank.open(tmp_path / "bank")) == 1 and w.undo_remove_btn.isEnabled()
    assert "Undo remove brings them back" in w.status.text()
    w.undo_remove()
    bank = ReferenceBank.open(tmp_path / "bank")
    assert len(bank) == 3 and w.references.count() == 3 and not w.undo_remove_btn.isEnabled()
    for r in bank:
        mask, source = before[r.original_name]
        assert np.array_equal(bank.load_mask(r.id), mask) and r.source == source


def test_the_dock_follows_the_selected_image_and_refuses_another_images_proposal_as_its_labels(
        annotator, qtbot, monkeypatch):
    viewer, w = annotator
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    stack = viewer.layers["sample ultrasound"].data
    labels = viewer.layers["sample ultrasound labels"].data
    add_references(viewer, w, 3)  # references for the proposals
    viewer.add_image(np.asarray(stack[5]), name="A")
    viewer.add_image(np.asarray(stack[6]), name="B")  # the same size as A
    viewer.layers.selection.active = viewer.layers["B"]
    assert w.image_combo.currentText() == "B"  # the dock's image is the selected layer
    w.propose_current()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert w.labels_combo.currentText() == "B proposal"
    viewer.layers.selection.active = viewer.layers["A"]
    assert w.image_combo.currentText() == "A"
    bank = w.state.bank
    before = len(bank)
    w.add_current_as_reference()  # A's image with B's mask: refused, nothing stored
    assert "labels 'B proposal' belong to image 'B', not to 'A'" in errors[-1] and len(bank) == before
    viewer.add_labels((np.asarray(labels[5]) > 0).astype(np.uint8), name="A painted")
    w.labels_combo.setCurrentText("A painted")  # the user's own labels: taken
    w.add_current_as_reference()
    assert len(bank) == before + 1
    w.propose_current()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    viewer.layers.selection.active = viewer.layers["B"]  # A's proposal was chosen: the labels follow to B's
    assert w.image_combo.currentText() == "B" and w.labels_combo.currentText() == "B proposal"


def test_a_volumes_labels_save_as_nifti_with_the_sources_affine_and_objects(make_napari_viewer, tmp_path):
    import napari
    import nibabel as nib

    from napari_matchseg.volume_io import read_volume

    affine = np.array([[0.9, 0, 0, -10.0], [0, 0.8, 0, 5.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    xyz = np.random.default_rng(0).integers(0, 900, (40, 36, 7)).astype(np.int16)
    source = tmp_path / "flair.nii.gz"
    nib.save(nib.Nifti1Image(xyz, affine), str(source))
    viewer = make_napari_viewer()
    viewer.open(str(source), plugin="napari-matchseg")
    image = viewer.layers[0]
    w = ReferenceAnnotator(viewer)
    painted = np.zeros((7, 36, 40), np.uint8)
    painted[2, 5:10, 6:12], painted[4, 20:25, 3:9] = 1, 2  # two objects
    viewer.add_labels(painted, name="my labels", scale=image.scale)  # what napari's New labels gives
    w.image_combo.setCurrentText(image.name)
    w.labels_combo.setCurrentText("my labels")
    out = w.save_volume_mask(str(tmp_path / "mask.nii.gz"))
    np.testing.assert_allclose(nib.load(out).affine, affine)
    assert np.array_equal(read_volume(out).data, painted)  # both objects, with their values
    assert w.save_volume_mask(str(tmp_path / "mask.nii.gz")) is None and "exists" in w.status.text()
    proposal, _ = w.propose._proposal_layers(image)  # the plugin's proposal layer of the volume
    proposal.data = painted
    napari.save_layers(str(tmp_path / "saved.nii.gz"), [proposal], plugin="napari-matchseg")  # Save Selected Layers
    np.testing.assert_allclose(nib.load(tmp_path / "saved.nii.gz").affine, affine)
    assert np.array_equal(read_volume(tmp_path / "saved.nii.gz").data, painted)


def test_the_effort_log_counts_clicks_boxes_and_seconds_per_accepted_slice(annotator, qtbot, tmp_path):
    import csv

    viewer, w = annotator
    add_references(viewer, w, 3)
    viewer.dims.set_current_step(0, 6)
    w.start_prompts()
    clicks, boxes = viewer.layers["sample ultrasound clicks"], viewer.layers["sample ultrasound box"]
    boxes.add_rectangles(np.array([[6, 40, 40], [6, 40, 120], [6, 120, 120], [6, 120, 40]], float))
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    w.add_click(clicks, (6.0, 80.0, 80.0), positive=True)
    qtbot.waitUntil(lambda: not w.busy and not w.prompts._dirty, timeout=60_000)
    w.add_click(clicks, (6.0, 45.0, 45.0), positive=False)
    qtbot.waitUntil(lambda: not w.busy and not w.prompts._dirty, timeout=60_000)
    w.clear_prompts()  # cleared prompts still count as effort
    w.accept_current()
    w.export_labelled(str(tmp_path / "export"))
    rows = list(csv.DictReader(open(tmp_path / "export" / "annotations.csv")))
    accepted = [r for r in rows if r["source"] == "accepted_proposal"]
    assert len(rows) == 4 and len(accepted) == 1 and accepted[0]["slice"] == "6"
    assert (accepted[0]["clicks"], accepted[0]["boxes"]) == ("2", "1") and float(accepted[0]["seconds"]) > 0
    assert all((r["clicks"], r["boxes"]) == ("0", "0") for r in rows if r["source"] == "manual")


def test_a_proposal_that_ends_after_its_image_is_deleted_or_left_leaves_the_user_where_they_are(annotator, qtbot):
    viewer, w = annotator
    add_references(viewer, w, 3)
    stack = viewer.layers["sample ultrasound"].data
    viewer.add_image(np.asarray(stack[6]), name="A")
    viewer.add_image(np.asarray(stack[7]), name="B")
    viewer.layers.selection.active = viewer.layers["A"]
    w.propose_current()
    viewer.layers.selection.active = viewer.layers["B"]  # the user moves on while A's proposal runs
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert "A proposal" in viewer.layers  # drawn on A's own layer ...
    assert viewer.layers.selection.active is viewer.layers["B"] and w.image_combo.currentText() == "B"  # ... only
    assert w.labels_combo.currentText() != "A proposal"
    viewer.layers.selection.active = viewer.layers["B"]
    w.propose_current()
    viewer.layers.remove("B")  # deleted while its proposal runs
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert "B proposal" not in viewer.layers and "B probability" not in viewer.layers
    assert "the image layer is gone" in w.status.text()


def test_several_objects_stay_apart_through_the_bank_and_export(annotator, tmp_path):
    """Two label values on one image: the bank keeps both ids (retrieval and proposers see one foreground), the
    label-values export writes them, the 0/255 export their union, and annotations.csv counts the objects."""
    import csv

    from napari_matchseg.image_io import read_labels, read_mask

    viewer, w = annotator
    labels = viewer.layers["sample ultrasound labels"]
    data = np.asarray(labels.data).copy()
    first = data[0] != 0
    data[0, 5:15, 5:15] = 2  # a second object
    labels.data = data
    viewer.dims.set_current_step(0, 0)
    w.add_current_as_reference()
    assert "2 objects, each its own label value" in w.status.text()
    bank = w.state.bank
    rid = bank.ids()[0]
    assert bank.get(rid).objects == 2
    ids = bank.load_labels(rid)
    assert set(np.unique(ids)) == {0, 1, 2} and (ids[5:15, 5:15] == 2).all() and (ids[first & (ids != 2)] == 1).all()
    assert bank.load_mask(rid)[5:15, 5:15].all() and bank.check() == []
    w.export_format.setCurrentText("png-labels")
    written = w.export_labelled(str(tmp_path / "ids"))
    np.testing.assert_array_equal(read_labels(written[0]), ids)
    w.export_format.setCurrentText("png-255")
    written = w.export_labelled(str(tmp_path / "union"))
    np.testing.assert_array_equal(read_mask(written[0]), ids != 0)
    with open(tmp_path / "ids" / "annotations.csv") as f:
        assert next(csv.DictReader(f))["objects"] == "2"
    w.references.item(0).setSelected(True)  # removed and brought back: the ids come back too
    w.remove_selected()
    w.undo_remove()
    np.testing.assert_array_equal(bank.load_labels(bank.ids()[0]), ids)


def test_a_failed_bank_open_says_which_bank_is_still_in_use(annotator, tmp_path, monkeypatch):
    viewer, w = annotator
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    (tmp_path / "a-file").write_text("not a folder")
    w.open_bank(str(tmp_path / "a-file"))
    assert errors and w.state.bank.path == tmp_path / "bank"
    assert w.bank_label.text() == f"could not open {tmp_path / 'a-file'}; still using {tmp_path / 'bank'}: 0 references"
