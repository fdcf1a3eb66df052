"""The ``context`` proposer: LiteMedSAM's real pretrained features read the references (no training involved)."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from conftest import load_real, real_ids
from napari_matchseg.errors import InputError
from napari_matchseg.metrics import dice


@pytest.fixture(scope="module")
def litemedsam():
    from napari_matchseg.litemedsam import LiteMedSamPredictor

    return LiteMedSamPredictor("cpu")


@pytest.fixture(scope="module")
def proposer(litemedsam):
    from napari_matchseg.proposers.context import ContextProposer

    return ContextProposer(model=litemedsam)


def _real(name, split, n, groups=None):
    return [load_real(name, rid) for rid in real_ids(name, split, n=n, groups=groups)]


def _busi_case(n_refs=4):
    """(reference images, their masks, a val image, its mask) of BUSI."""
    refs = _real("busi", "train", n_refs, BUSI)
    (query, gt), = _real("busi", "val", 1, BUSI)
    return [r[0] for r in refs], [r[1] for r in refs], query, gt


BUSI = ("benign", "malignant")


@pytest.mark.slow
def test_cached_and_uncached_paths_give_the_same_proposal(litemedsam, tmp_path):
    from napari_matchseg.feature_cache import FeatureCache
    from napari_matchseg.litemedsam import LiteMedSamPredictor
    from napari_matchseg.proposers.context import ContextProposer

    imgs, masks, query, _ = _busi_case(3)
    fresh = ContextProposer(model=LiteMedSamPredictor("cpu", model=litemedsam.model))
    fresh.attach_cache(FeatureCache(tmp_path, "litemedsam-test"))
    first = fresh.predict(query, imgs, masks)  # computes every embedding and writes it to the disk cache
    assert fresh.predictor.encodings == 4 and len(list((tmp_path / "features").rglob("*.npy"))) == 4
    reader = ContextProposer(model=LiteMedSamPredictor("cpu", model=litemedsam.model))
    reader.attach_cache(FeatureCache(tmp_path, "litemedsam-test"))
    again = reader.predict(query, imgs, masks)  # every embedding read from disk
    assert reader.predictor.encodings == 0
    np.testing.assert_array_equal(first, again)


@pytest.mark.slow
def test_the_references_masks_decide_the_proposal(proposer):
    """The same reference images with other masks (their complement) give another proposal."""
    imgs, masks, query, gt = _busi_case()
    lesion = proposer.predict(query, imgs, masks) >= 0.5
    tissue = proposer.predict(query, imgs, [~m for m in masks]) >= 0.5
    assert dice(lesion, gt) > 0.5, dice(lesion, gt)
    assert dice(lesion, tissue) < 0.3 and dice(tissue, gt) < 0.3


@pytest.mark.slow
def test_several_objects_in_the_references_give_several_objects(proposer):
    refs = _real("dsb2018_nuclei", "train", 4)
    query, gt = next((img, m) for img, m in _real("dsb2018_nuclei", "val", 20) if ndi.label(m)[1] >= 5)
    prob = proposer.predict(query, [r[0] for r in refs], [r[1] for r in refs])
    n_objects = ndi.label(prob >= 0.5)[1]
    assert n_objects >= 3, n_objects
    assert dice(prob >= 0.5, gt) > 0.5


@pytest.mark.slow
def test_a_positive_click_outside_grows_the_proposal_and_a_negative_one_inside_shrinks_it(proposer):
    imgs, masks, query, gt = _busi_case()
    before = proposer.predict(query, imgs, masks) >= 0.5
    assert before.any()
    missed = gt & ~before  # click where the lesion is but the proposal is not (else anywhere outside it)
    ys, xs = np.nonzero(missed if missed.sum() > 20 else ~ndi.binary_dilation(before, iterations=10))
    y, x = ys[len(ys) // 2], xs[len(xs) // 2]
    grown = proposer.predict(query, imgs, masks, prompts={"points": [[float(x), float(y), 1]]}) >= 0.5
    assert grown[y, x] and grown.sum() > before.sum()
    cy, cx = (int(round(c)) for c in ndi.center_of_mass(before))
    if not before[cy, cx]:
        ys, xs = np.nonzero(ndi.binary_erosion(before, iterations=3))
        cy, cx = ys[len(ys) // 2], xs[len(xs) // 2]
    shrunk = proposer.predict(query, imgs, masks, prompts={"points": [[float(cx), float(cy), 0]]}) >= 0.5
    assert shrunk.sum() < before.sum()


@pytest.mark.slow
def test_k_0_1_and_32_references(proposer):
    imgs, masks, query, gt = _busi_case()
    ys, xs = np.nonzero(gt)
    box = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
    alone = proposer.predict(query, prompts={"boxes": [box]})  # k = 0: the box alone
    assert dice(alone >= 0.5, gt) > 0.7
    with pytest.raises(InputError, match="needs references .* or prompts"):
        proposer.predict(query)
    one = proposer.predict(query, imgs[:1], masks[:1])
    assert one.shape == gt.shape and one.dtype == np.float32
    many = proposer.predict(query, imgs * 8, masks * 8)  # 32 references
    assert many.shape == gt.shape and dice(many >= 0.5, gt) > 0.3


def test_options_are_checked_before_the_model_loads():
    from napari_matchseg.proposers.context import ContextProposer

    with pytest.raises(InputError, match="--context-method must be one of"):
        ContextProposer(model=object(), method="knn")
    with pytest.raises(InputError, match="--context-decoder must be one of"):
        ContextProposer(model=object(), decoder="points")


def test_reference_cells_follow_the_image_inside_the_padded_input():
    """A mask on a wide image covers the cells its pixels fall in; padding cells are not part of the grid."""
    from napari_matchseg.in_context import mask_to_cells, valid_cells

    assert valid_cells((128, 256)) == (32, 64) and valid_cells((1, 3)) == (1, 1)
    mask = np.zeros((100, 200), bool)
    mask[:, :100] = True  # the left half
    cells = mask_to_cells(mask, (128, 256))
    assert cells.shape == (32, 64)
    assert float(cells[:, :32].min()) == 1.0 and float(cells[:, 32:].max()) == 0.0


@pytest.mark.slow
def test_segment_with_the_context_proposer_from_prompts_alone_needs_no_bank(tmp_path, capsys):
    import json

    from PIL import Image

    from napari_matchseg.cli import main

    (tmp_path / "imgs").mkdir()
    img = np.full((64, 64), 40, np.uint8)
    img[20:40, 20:40] = 200
    Image.fromarray(img).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "p.json").write_text(json.dumps({"a.png": {"boxes": [[18, 18, 42, 42]]}}))
    code = main(["segment", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "masks"), "--proposer",
                 "context", "-k", "0", "--prompts", str(tmp_path / "p.json")])
    assert code == 0, capsys.readouterr().err
    mask = np.array(Image.open(tmp_path / "masks" / "a.png")) > 0
    assert dice(mask, img > 100) > 0.8


def test_the_context_proposer_retrieves_with_litemedsam_unless_told_otherwise():
    """Its own retriever (the embedding it computes anyway; better references for it, docs/context.md); an explicit
    --retriever stays; the other proposers keep the default."""
    import argparse

    from napari_matchseg.cli.proposal_args import add_proposal_args, config_from_args
    from napari_matchseg.pipeline import PipelineConfig

    assert PipelineConfig(proposer="context").retriever == "medsam"
    assert PipelineConfig(proposer="context", retriever="handcrafted").retriever == "handcrafted"
    assert PipelineConfig().retriever == PipelineConfig(proposer="matchseg").retriever == "handcrafted"
    p = argparse.ArgumentParser()
    add_proposal_args(p)
    parse = lambda *a: config_from_args(p.parse_args(["--bank", "b", *a]))  # noqa: E731 - nothing is loaded
    assert parse("--proposer", "context").retriever == "medsam"
    assert parse("--proposer", "context", "--retriever", "handcrafted").retriever == "handcrafted"
    assert parse().retriever == "handcrafted"
    assert parse("--retriever", "medsam").retriever == "medsam"
