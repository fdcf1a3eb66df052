"""The in-context memory-attention head (issue 36, stage 3): shapes, pooled = unpooled references, weights on disk,
training that learns and resumes exactly, and the ``context`` proposer with ``--context-method head``."""

import numpy as np
import pytest
import torch

from napari_matchseg.errors import InputError, WeightsError
from napari_matchseg.modeling.context_head import ContextHead
from napari_matchseg.training.context_head import Item, Settings, episode_tensors, save_head, train, validate

TINY = {"dim": 16, "layers": 1, "heads": 2, "fine": 4, "width": 8}


def _inputs(b=2, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, 1, 64, 64)
    valid[..., 48:, :] = 0  # a wide image: the bottom rows are padding
    return (torch.randn(b, 256, 64, 64, generator=g), valid, torch.randn(b, k, 256, 64, 64, generator=g),
            torch.rand(b, k, 1, 64, 64, generator=g), torch.ones(b, k, 1, 64, 64))


@pytest.mark.parametrize("k", [1, 4, 32])
def test_any_number_of_references_and_padding_is_background(k):
    head = ContextHead(**TINY).eval()
    with torch.no_grad():
        out = head(*_inputs(b=1, k=k))
    assert out.shape == (1, 1, 64, 64) and torch.isfinite(out).all()
    assert (out[..., 48:, :] <= -20).all() and (out[..., :48, :] > -20).all()


def test_references_pooled_ahead_give_the_same_logits():
    """Training pools each reference once ahead; the proposer passes full grids: both paths must agree."""
    head = ContextHead(**TINY).eval()
    q, qv, refs, frac, valid = _inputs()
    with torch.no_grad():
        full = head(q, qv, refs, frac, valid)
        pooled = head(q, qv, *head.pool_references(refs, frac, valid))
    torch.testing.assert_close(full, pooled)


def test_the_references_masks_change_the_map():
    torch.manual_seed(0)
    head = ContextHead(**TINY).eval()
    q, qv, refs, frac, valid = _inputs()
    with torch.no_grad():
        a = head(q, qv, refs, frac, valid)
        b = head(q, qv, refs, 1 - frac, valid)
    assert (a - b).abs().max() > 1e-5  # untrained: small, but the masks reach the output


def _toy_datasets(n=12, seed=0):
    """Cells whose features point along a foreground or a background direction; the same direction is the object
    in one dataset and the background in another, so only the references tell which is which."""
    dirs = torch.nn.functional.normalize(torch.randn(4, 256, generator=torch.Generator().manual_seed(0)), dim=1)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for d, (fg, bg) in enumerate([(0, 1), (1, 0), (2, 3)]):
        items = []
        for _ in range(n):
            mask = torch.zeros(32, 32)  # the head works on any even grid; the test's is small to be quick
            y, x = torch.randint(2, 20, (2,), generator=g).tolist()
            mask[y:y + 10, x:x + 10] = 1
            feats = dirs[fg][:, None, None] * mask + dirs[bg][:, None, None] * (1 - mask)
            feats = feats * 3 + 0.1 * torch.randn(256, 32, 32, generator=g)
            items.append(Item(feats.half(), mask[None], torch.ones(1, 32, 32), f"toy{d}"))
        out[f"toy{d}"] = items
    return out


@pytest.mark.slow
def test_training_learns_to_read_the_references_and_resumes_exactly(tmp_path):
    data = _toy_datasets()
    val = {n: [(items[0], items[1:5])] for n, items in _toy_datasets(seed=1).items()}
    settings = Settings(steps=100, batch=4, ks=(2, 3), lr=3e-3, warmup=5, val_every=50, swap=0.5)
    head = ContextHead(**TINY)
    before = validate(head, val)
    result = train(tmp_path / "run", data, val, settings, TINY, log=lambda s: None)
    assert result["done"] and (tmp_path / "run" / "best.safetensors").is_file()
    from napari_matchseg.in_context_head import load_context_head

    after = validate(load_context_head(tmp_path / "run" / "best.safetensors"), val)
    # toy0 and toy1 are the same images with object and background swapped: both right means reading
    assert min(after.values()) > 0.8 > max(before.values()), (before, after)
    # exact resume: 4 steps at once equal 2 steps, a stop, then 2 more
    short = Settings(steps=4, batch=2, ks=(2,), warmup=2, val_every=2)
    train(tmp_path / "once", data, {}, short, TINY, log=lambda s: None)
    train(tmp_path / "twice", data, {}, Settings(**{**short.__dict__, "steps": 2}), TINY, log=lambda s: None)
    train(tmp_path / "twice", data, {}, short, TINY, log=lambda s: None)
    a = torch.load(tmp_path / "once" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "twice" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_episodes_swap_foreground_and_background_together():
    items = _toy_datasets(n=3)["toy0"]
    q, qv, refs, frac, valid, target = episode_tensors(items[0], items[1:], swap=False)
    *_, frac_s, _, target_s = episode_tensors(items[0], items[1:], swap=True)
    torch.testing.assert_close(frac_s, (1 - frac) * valid)
    torch.testing.assert_close(target_s, 1 - target)


def test_saved_weights_load_back_and_bad_files_say_so(tmp_path):
    from napari_matchseg.in_context_head import load_context_head

    head = ContextHead(**TINY).eval()
    save_head(head, tmp_path / "head.safetensors")
    again = load_context_head(tmp_path / "head.safetensors")
    assert again.config == head.config
    with torch.no_grad():
        torch.testing.assert_close(again(*_inputs(b=1)), head.half().float()(*_inputs(b=1)), atol=1e-3, rtol=1e-3)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(WeightsError, match="cannot read context head weights"):
        load_context_head(tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match="not found"):
        load_context_head(tmp_path / "missing.safetensors")


def test_the_head_method_needs_its_weights():
    from napari_matchseg.proposers.context import ContextProposer

    with pytest.raises(InputError, match="--context-head"):
        ContextProposer(method="head")


@pytest.mark.slow
@pytest.mark.parametrize("config", [TINY, {"kind": "relational", "width": 8, "fitted": True, "residual": True}],
                         ids=["attention", "relational"])
def test_the_context_proposer_with_a_head_follows_its_references(tmp_path, config):
    """Real LiteMedSAM embeddings, a head with random weights (either kind): the map depends on the references'
    masks, any k works, and a second proposal reads every reference's memory from the proposer's cache."""
    from conftest import load_real, real_ids

    from napari_matchseg.modeling.heads import build_context_head
    from napari_matchseg.proposers.context import ContextProposer

    torch.manual_seed(0)
    save_head(build_context_head(None, **config), tmp_path / "head.safetensors")
    proposer = ContextProposer(device="cpu", method="head", head=str(tmp_path / "head.safetensors"), decoder="none")
    refs = [load_real("busi", rid) for rid in real_ids("busi", "train", n=2, groups=("benign", "malignant"))]
    (query, _), = [load_real("busi", rid) for rid in real_ids("busi", "val", n=1, groups=("benign", "malignant"))]
    imgs, masks = [r[0] for r in refs], [r[1] for r in refs]
    a = proposer.predict(query, imgs, masks)
    b = proposer.predict(query, imgs, [~m for m in masks])
    assert a.shape == query.shape[:2] and a.dtype == np.float32
    assert np.abs(a - b).max() > 1e-3
    encodings = proposer.predictor.encodings
    np.testing.assert_array_equal(proposer.predict(query, imgs, masks), a)
    assert proposer.predictor.encodings == encodings
    assert proposer.predict(query, imgs[:1], masks[:1]).shape == a.shape


def test_a_residual_head_starts_as_its_priors():
    """Untrained, the residual head's logit is the training-free priors' (the correction starts at 0)."""
    from napari_matchseg.modeling.context_head import _label_transfer, _prototype_priors

    head = ContextHead(**TINY, residual=True).eval()
    q, qv, refs, frac, valid = _inputs(b=1)
    with torch.no_grad():
        out = head(q, qv, refs, frac, valid)
        r, f, v = head.pool_references(refs, frac, valid)
        p = _prototype_priors(q, r, f, v)
        t = _label_transfer(torch.nn.functional.avg_pool2d(q, 2), r, f, v.flatten(1) > 0.5)
        t = torch.nn.functional.interpolate(t, size=(64, 64), mode="bilinear", align_corners=False)
        expected = 10 * (p[:, :1] - p[:, 1:]) + 4 * (t - 0.5)
    torch.testing.assert_close(out[..., :48, :], expected[..., :48, :])
