"""The SAM 2 memory-attention proposer and SAM-Match refinement, with a randomly initialised SAM 2.1
hiera-tiny saved in the official checkpoint format ({"model": state_dict}) and loaded through the real
loading path, at a 256 px input so that it runs in seconds on a CPU. No real SAM 2 weights are used here."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from conftest import load_real, real_ids
from napari_matchseg.bank import ReferenceBank
from napari_matchseg.errors import InputError, WeightsError
from napari_matchseg.feature_cache import FeatureCache
from napari_matchseg.propose import propose
from napari_matchseg.retrieval import get_retriever
from napari_matchseg.proposers.sam2_memory import Sam2MemoryProposer
from napari_matchseg.sam2_model import build_sam2_model
from napari_matchseg.refiners.sam2 import Sam2Refiner, extract_prompts

SIZE = 256


@pytest.fixture(scope="module")
def tiny_sam2(tmp_path_factory):
    torch.manual_seed(0)
    model = build_sam2_model("sam2.1_hiera_tiny", image_size=SIZE, random_init=True, device="cpu")
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny_random.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def proposer(tiny_sam2):
    return Sam2MemoryProposer("sam2.1_hiera_tiny", checkpoint=tiny_sam2, device="cpu", image_size=SIZE)


def _pairs(n, shape=(90, 110), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        m = np.zeros(shape[:2], bool)
        y, x = rng.integers(5, 40, 2)
        m[y:y + 30, x:x + 40] = True
        img[m] //= 3
        out.append((img, m))
    return out


def test_memory_proposer_output_and_cache(proposer, tiny_sam2, tmp_path):
    (a, ma), (b, mb), (q, _) = _pairs(3)
    prob = proposer.predict(q, [a, b], [ma, mb])
    assert prob.shape == q.shape and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1
    rgb = proposer.predict(np.stack([q] * 3, -1), [a, b], [ma, mb])
    np.testing.assert_allclose(rgb, prob, atol=1e-5)  # grayscale = replicated RGB
    cached = Sam2MemoryProposer("sam2.1_hiera_tiny", checkpoint=tiny_sam2, device="cpu",
                                image_size=SIZE)
    cached.attach_cache(FeatureCache(tmp_path / "bank", cached.model_id))
    first = cached.predict(q, [a, b], [ma, mb])
    assert cached.reference_encodings == 2 and len(list((tmp_path / "bank").rglob("*.npy"))) == 2
    fresh = Sam2MemoryProposer("sam2.1_hiera_tiny", checkpoint=tiny_sam2, device="cpu",
                               image_size=SIZE)
    fresh.attach_cache(FeatureCache(tmp_path / "bank", fresh.model_id))
    again = fresh.predict(q, [a, b], [ma, mb])
    assert fresh.reference_encodings == 0  # both memories came from disk
    np.testing.assert_allclose(first, prob, atol=1e-5)  # the cached path gives the uncached output
    np.testing.assert_allclose(again, prob, atol=5e-3)  # (memories are stored in float16)


def test_support_masks_reach_the_query_logits(proposer):
    (a, ma), (q, _) = _pairs(2, seed=3)
    seen = []
    handle = proposer.model.sam_mask_decoder.register_forward_hook(lambda m, i, o: seen.append(o[0].detach().clone()))
    try:
        proposer.predict(q, [a], [ma])
        proposer.predict(q, [a], [ndi.binary_dilation(~ma, iterations=2)])
    finally:
        handle.remove()
    query_logits = seen[-2:]  # the decoder's masks for the two queries (before object gating)
    assert (query_logits[0] - query_logits[1]).abs().max() > 1e-4


def test_bad_inputs_and_checkpoints(proposer, tiny_sam2, tmp_path):
    (a, ma), (q, _) = _pairs(2)
    with pytest.raises(InputError, match="between 1 and 32"):
        proposer.predict(q, [], [])
    with pytest.raises(InputError, match="2 support images but 1"):
        proposer.predict(q, [a, a], [ma])
    with pytest.raises(InputError, match=r"\(90, 100\)"):
        proposer.predict(q, [a], [ma[:, :100]])
    bad = tmp_path / "bad.pt"
    torch.save({"weights": {}}, bad)
    with pytest.raises(WeightsError, match="'model' key"):
        Sam2MemoryProposer(checkpoint=bad, device="cpu", image_size=SIZE)
    bad.write_bytes(tiny_sam2.read_bytes()[:10000])
    with pytest.raises(WeightsError, match="corrupt"):
        Sam2MemoryProposer(checkpoint=bad, device="cpu", image_size=SIZE)
    with pytest.raises(WeightsError, match="does not fit SAM 2 sam2.1_hiera_small"):
        Sam2MemoryProposer("sam2.1_hiera_small", checkpoint=tiny_sam2, device="cpu", image_size=SIZE)
    with pytest.raises(WeightsError) as e:  # offline, nothing in the cache
        Sam2MemoryProposer("sam2.1_hiera_large", device="cpu")
    assert "sam2.1_hiera_large.pt" in str(e.value) and "dl.fbaipublicfiles.com" in str(e.value)


def test_prompts_from_real_masks():
    for rid in real_ids("busi", "test", n=8, groups=("benign", "malignant")):
        _, gt = load_real("busi", rid)
        prob = np.clip(ndi.gaussian_filter(gt.astype(np.float32), 3) * 1.2, 0, 1)
        prompts, reason = extract_prompts(prob, threshold=0.95, margin=30)
        assert prompts is not None, reason
        pos = prompts.points[prompts.labels == 1].astype(int)
        neg = prompts.points[prompts.labels == 0].astype(int)
        assert len(pos) >= 1 and gt[pos[:, 1], pos[:, 0]].all()  # positives inside the lesion
        assert len(neg) >= 1 and not gt[neg[:, 1], neg[:, 0]].any()  # negatives outside
        x0, y0, x1, y1 = prompts.box
        ys, xs = np.nonzero(prob >= 0.95)
        assert x0 <= xs.min() and y0 <= ys.min() and x1 >= xs.max() and y1 >= ys.max()


def test_unconfident_proposals_pass_through(tiny_sam2):
    assert extract_prompts(np.zeros((50, 50), np.float32)) == (None, "empty proposal")
    p, reason = extract_prompts(np.full((50, 50), 0.7, np.float32))
    assert p is None and "no pixel is confident" in reason
    refiner = Sam2Refiner(checkpoint=tiny_sam2, device="cpu", image_size=SIZE)
    img = _pairs(1)[0][0]
    prob = np.full(img.shape, 0.7, np.float32)
    r = refiner.refine(img, prob)
    assert not r.refined and "not refined" in r.reason and r.mask.all()
    prob[20:50, 30:70] = 0.99
    prob[:5] = 0.01
    r = refiner.refine(img, prob)
    assert r.refined and r.mask.shape == img.shape and r.mask.dtype == bool and r.prompts is not None


@pytest.mark.slow
def test_sam2_through_propose_and_the_cli(tiny_sam2, tmp_path, capsys):
    from napari_matchseg.cli import main
    from napari_matchseg.sample_data import write_sample

    write_sample(tmp_path / "s", n_per_kind=3)
    assert main(["bank", "add", str(tmp_path / "b"), "--images", str(tmp_path / "s/images"), "--masks",
                 str(tmp_path / "s/masks")]) == 0
    code = main(["segment", "--bank", str(tmp_path / "b"), "--images", str(tmp_path / "s/images"), "--out",
                 str(tmp_path / "o"), "--proposer", "sam2", "--checkpoint", str(tiny_sam2), "--sam2-image-size",
                 str(SIZE), "-k", "2", "--refine", "sam2", "--sam2-checkpoint", str(tiny_sam2)])
    assert code == 0, capsys.readouterr().err
    assert len(list((tmp_path / "o").glob("*.png"))) == 6
    bank = ReferenceBank.open(tmp_path / "b")
    p = Sam2MemoryProposer(checkpoint=tiny_sam2, device="cpu", image_size=SIZE)
    out = propose(bank, bank.load_image("cells_00"), retriever=get_retriever("handcrafted"), predictor=p, k=2)
    assert [m.id for m in out.supports][0] == "cells_00"
