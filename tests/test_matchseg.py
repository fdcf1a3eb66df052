"""The MatchSeg network, checkpoints, predictor and support-feature cache (small random models)."""

import numpy as np
import pytest
import torch

from conftest import TINY_MATCHSEG
from napari_matchseg.bank import ReferenceBank
from napari_matchseg.checkpoint import build_matchseg, save_checkpoint
from napari_matchseg.errors import InputError, WeightsError
from napari_matchseg.metrics import dice, hd95, iou
from napari_matchseg.modeling import MatchSeg, MatchSegConfig
from napari_matchseg.proposers.matchseg import MatchSegPredictor
from napari_matchseg.propose import propose
from napari_matchseg.retrieval import get_retriever

TINY = MatchSegConfig(**TINY_MATCHSEG)


def _pairs(n, shape=(70, 90), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        m = np.zeros(shape[:2], bool)
        y, x = rng.integers(10, 40, 2)
        m[y:y + 20, x:x + 30] = True
        img[m] = np.clip(img[m] // 3, 0, 255)
        out.append((img, m))
    return out


@pytest.mark.parametrize("interaction", ["joint_attention", "crossconv", "none"])
def test_forward_shapes_for_any_k(interaction):
    model = MatchSeg(MatchSegConfig(**{**TINY.to_dict(), "interaction": interaction})).eval()
    for k in (1, 3, 32):
        q = torch.rand(2, 3, 64, 64)
        out = model(q, torch.rand(2, k, 3, 64, 64), (torch.rand(2, k, 1, 64, 64) > 0.5).float())
        assert out.shape == (2, 1, 64, 64) and torch.isfinite(out).all()


def test_predictor_sizes_channels_and_k(tiny_ckpt):
    p = MatchSegPredictor(tiny_ckpt, device="cpu")
    sup = _pairs(32)
    gray = _pairs(1, (70, 90), seed=5)[0][0]
    rgb = np.stack([gray] * 3, -1)
    for k in (1, 32):
        prob = p.predict(gray, [s[0] for s in sup[:k]], [s[1] for s in sup[:k]])
        assert prob.shape == (70, 90) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1
    np.testing.assert_allclose(p.predict(rgb, [sup[0][0]], [sup[0][1]]), p.predict(gray, [sup[0][0]], [sup[0][1]]),
                               atol=1e-6)  # grayscale is replicated RGB by convention
    batch = p.predict_batch([gray, rgb], [([s[0] for s in sup[:2]], [s[1] for s in sup[:2]]),
                                          ([sup[0][0]], [sup[0][1]])])
    assert [b.shape for b in batch] == [(70, 90), (70, 90)]


def test_mirror_tta_averages_the_image_and_its_mirror(tiny_ckpt):
    (img, m), (q, _), (q2, _) = _pairs(3)
    plain = MatchSegPredictor(tiny_ckpt, device="cpu")
    tta = MatchSegPredictor(tiny_ckpt, device="cpu", mirror_tta=True)
    sup = ([img], [m])
    p = plain.predict(q, *sup)
    p_mirror = plain.predict(np.ascontiguousarray(q[:, ::-1]), *sup)[:, ::-1]
    assert np.abs(p - p_mirror).max() > 1e-4  # a random network is not mirror-symmetric: the views differ
    [(a, b), (a2, _)] = plain.predict_with_mirror([q, q2], [sup, sup])
    np.testing.assert_allclose(a, p, atol=1e-5)
    np.testing.assert_allclose(a2, plain.predict(q2, *sup), atol=1e-5)
    np.testing.assert_allclose(b, p_mirror, atol=1e-5)
    np.testing.assert_allclose(tta.predict(q, *sup), 0.5 * (p + p_mirror), atol=1e-5)


def test_supports_matter(tiny_ckpt):
    p = MatchSegPredictor(tiny_ckpt, device="cpu")
    (img, m), (q, _) = _pairs(2)
    a = p.predict(q, [img], [m])
    b = p.predict(q, [img], [~m])
    assert np.abs(a - b).max() > 1e-4  # the support mask flows through the attention into the logits


def test_bad_supports_are_refused(tiny_ckpt):
    p = MatchSegPredictor(tiny_ckpt, device="cpu")
    (img, m), (q, _) = _pairs(2)
    with pytest.raises(InputError, match="1 support images but 2"):
        p.predict(q, [img], [m, m])
    with pytest.raises(InputError, match="between 1 and 32"):
        p.predict(q, [], [])
    with pytest.raises(InputError, match="between 1 and 32"):
        p.predict(q, [img] * 33, [m] * 33)
    with pytest.raises(InputError, match=r"support mask 0 has shape \(70, 89\)"):
        p.predict(q, [img], [m[:, :89]])
    with pytest.raises(InputError, match="query"):
        p.predict(np.zeros((3, 70, 90, 5), np.uint8), [img], [m])


def test_checkpoint_round_trip_and_errors(tiny_ckpt, tmp_path):
    (img, m), (q, _) = _pairs(2)
    a = MatchSegPredictor(tiny_ckpt, device="cpu").predict(q, [img], [m])
    b = MatchSegPredictor(tiny_ckpt, device="cpu").predict(q, [img], [m])
    np.testing.assert_array_equal(a, b)
    model, meta = build_matchseg(tiny_ckpt)
    assert meta["note"] == "random" and model.config == TINY
    half = save_checkpoint(tmp_path / "half.safetensors", model, meta, half=True)
    assert half.stat().st_size < tiny_ckpt.stat().st_size * 0.6
    np.testing.assert_allclose(MatchSegPredictor(half, device="cpu").predict(q, [img], [m]), a, atol=2e-2)
    with pytest.raises(WeightsError, match="does not exist"):
        build_matchseg(tmp_path / "none.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_ckpt.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="corrupt"):
        build_matchseg(cut)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(WeightsError, match="not a napari-matchseg checkpoint"):
        build_matchseg(tmp_path / "foreign.safetensors")
    bad = tmp_path / "pickle.safetensors"
    bad.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(WeightsError):
        build_matchseg(bad)


def test_support_features_are_cached_in_the_bank(tiny_ckpt, tmp_path, monkeypatch):
    bank = ReferenceBank.create(tmp_path / "b")
    pairs = _pairs(6)
    for i, (img, m) in enumerate(pairs[:5]):
        bank.add(img, m, name=f"r{i}")
    query = pairs[5][0]
    r = get_retriever("handcrafted")
    p1 = MatchSegPredictor(tiny_ckpt, device="cpu")
    first = propose(bank, query, retriever=r, predictor=p1, k=4)
    assert len(first.supports) == 4 and first.probability.shape == query.shape
    files = list((bank.path / "features").rglob("*.npy"))
    assert len(files) == 4
    p2 = MatchSegPredictor(tiny_ckpt, device="cpu")
    calls = []
    orig = p2.model.encode_supports
    monkeypatch.setattr(p2.model, "encode_supports", lambda *a: calls.append(1) or orig(*a))
    second = propose(bank, query, retriever=r, predictor=p2, k=4)
    assert calls == []  # every support came from the bank's cache
    np.testing.assert_allclose(second.probability, first.probability, atol=2e-3)  # fp16 on disk
    random = propose(bank, query, retriever=r, predictor=p2, k=3, strategy="random")
    assert len(random.supports) == 3


def test_metrics_edge_cases():
    a = np.zeros((20, 20), bool)
    b = a.copy()
    assert dice(a, b) == 1 and iou(a, b) == 1 and hd95(a, b) == 0
    b[5:10, 5:10] = True
    assert dice(a, b) == 0 and np.isnan(hd95(a, b))
    a[5:10, 5:15] = True
    assert dice(a, b) == pytest.approx(2 * 25 / 75) and iou(a, b) == pytest.approx(0.5)
    assert hd95(a, b) == pytest.approx(5.0, abs=0.6)


def test_the_shipped_checkpoint_reads_its_supports():
    """The embedded default must follow its references, not only the image: on synthetic tasks only the supports
    say which of two kinds of object is foreground, so inverting their masks has to cost Dice."""
    from napari_matchseg.training.synthetic import support_use

    model, _ = build_matchseg(None)
    true, inverted = support_use(model, np.random.default_rng(1), episodes=12, k=8)
    assert true > 0.8, true
    assert true - inverted > 0.2, (true, inverted)
