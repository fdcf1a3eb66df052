"""The relational head (issue 36, stage 3): it sees only how the query resembles its references, so turning every
feature vector by one rotation changes nothing, the references' masks change everything, and it trains and loads
through the same code as the attention head."""

import pytest
import torch

from napari_matchseg.modeling.heads import build_context_head
from napari_matchseg.modeling.relational_head import MAPS, RelationalHead, relational_maps
from napari_matchseg.training.context_head import Settings, save_head, train, validate

TINY = {"kind": "relational", "width": 8}


def _inputs(b=2, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, 1, 64, 64)
    valid[..., 48:, :] = 0  # a wide image: the bottom rows are padding
    frac = (torch.rand(b, k, 1, 64, 64, generator=g) > 0.7).float()
    return (torch.randn(b, 256, 64, 64, generator=g), valid, torch.randn(b, k, 256, 64, 64, generator=g), frac,
            torch.ones(b, k, 1, 64, 64))


@pytest.mark.parametrize("k", [1, 4, 32])
def test_any_number_of_references_and_padding_is_background(k):
    head = RelationalHead(width=8).eval()
    with torch.no_grad():
        out = head(*_inputs(b=1, k=k))
    assert out.shape == (1, 1, 64, 64) and torch.isfinite(out).all()
    assert (out[..., 48:, :] <= -20).all() and (out[..., :48, :] > -20).all()


def test_a_rotation_of_the_feature_space_changes_nothing():
    """What defines the head: its input is similarities, so a kind of image whose features point elsewhere looks
    the same to it as the training datasets did."""
    torch.manual_seed(0)
    head = RelationalHead(width=8).eval()
    q, qv, refs, frac, valid = _inputs()
    rot = torch.linalg.qr(torch.randn(256, 256, generator=torch.Generator().manual_seed(3)))[0]
    with torch.no_grad():
        a = head(q, qv, refs, frac, valid)
        b = head(torch.einsum("dc,bchw->bdhw", rot, q), qv, torch.einsum("dc,bkchw->bkdhw", rot, refs), frac, valid)
    torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_the_references_masks_change_the_map_and_empty_masks_are_finite():
    torch.manual_seed(0)
    head = RelationalHead(width=8).eval()
    q, qv, refs, frac, valid = _inputs()
    with torch.no_grad():
        a = head(q, qv, refs, frac, valid)
        b = head(q, qv, refs, 1 - frac, valid)
        empty = head(q, qv, refs, torch.zeros_like(frac), valid)
    assert (a - b).abs().max() > 1e-4
    assert torch.isfinite(empty).all()


def test_the_maps_follow_the_references_on_an_easy_case():
    """A query cell equal to a reference's foreground cell gets a high transfer and probe score; a background one
    a low score."""
    fg, bg = torch.nn.functional.normalize(torch.randn(2, 256, generator=torch.Generator().manual_seed(1)), dim=1)
    mask = torch.zeros(1, 1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    ref = (fg[:, None, None] * mask[0, 0] + bg[:, None, None] * (1 - mask[0, 0]))[None, None]
    query = ref[:, 0]
    pooled = RelationalHead().pool_references(ref, mask, torch.ones_like(mask))
    maps = relational_maps(query, torch.ones(1, 1, 64, 64), *pooled)
    assert maps.shape == (1, MAPS, 64, 64)
    inside, outside = maps[0, :, 32, 32], maps[0, :, 2, 2]
    assert (inside[:5] > outside[:5]).all(), (inside, outside)  # transfers, nearest, prototypes, probe


@pytest.mark.slow
def test_training_on_toy_tasks_learns_and_the_weights_load_back(tmp_path):
    from test_context_head import _toy_datasets

    from napari_matchseg.in_context_head import load_context_head

    data = _toy_datasets()
    val = {n: [(items[0], items[1:5])] for n, items in _toy_datasets(seed=1).items()}
    settings = Settings(steps=60, batch=4, ks=(2, 3), lr=3e-3, warmup=5, val_every=30, swap=0.5, rotate=0.0)
    result = train(tmp_path / "run", data, val, settings, TINY, log=lambda s: None)
    assert result["done"]
    head = load_context_head(tmp_path / "run" / "best.safetensors")
    assert isinstance(head, RelationalHead) and head.config == build_context_head(None, **TINY).config
    assert min(validate(head, val).values()) > 0.8
    save_head(head, tmp_path / "again.safetensors")
    assert isinstance(load_context_head(tmp_path / "again.safetensors"), RelationalHead)


def test_synthetic_tasks_use_one_rule_for_every_image_and_are_reproducible():
    """A made-up object: the same direction and threshold in the query and its references, any share of the image,
    the same task again from the same seed (training resumes exactly)."""
    import numpy as np
    from test_context_head import _toy_datasets

    from napari_matchseg.training.context_head import synthetic_task

    items = _toy_datasets(n=5)["toy0"]
    for seed in range(6):
        task = synthetic_task(items, np.random.default_rng(seed), pool=2)
        again = synthetic_task(items, np.random.default_rng(seed), pool=2)
        fracs = torch.cat([t.fraction for t in task])
        assert set(fracs.unique().tolist()) <= {0.0, 1.0}
        assert 0.02 <= float(fracs.mean()) <= 0.45
        for t, u in zip(task, again):
            torch.testing.assert_close(t.fraction, u.fraction)
            assert t.memory(2)[1].shape == (1, 16, 16)
            torch.testing.assert_close(t.memory(2)[1], torch.nn.functional.avg_pool2d(t.fraction[None], 2)[0])


@pytest.mark.slow
def test_training_from_stored_maps_resumes_the_cache_and_refuses_other_settings(tmp_path):
    """The maps of the first batches are computed once (a stopped fill keeps its chunks), training replays them
    and learns the toy tasks; a cache made from other settings is refused."""
    from test_context_head import _toy_datasets

    from napari_matchseg.training.context_head import Episodes, input_pool
    from napari_matchseg.training.map_cache import CHUNK, MapCache

    data = _toy_datasets()
    val = {n: [(items[0], items[1:5])] for n, items in _toy_datasets(seed=1).items()}
    settings = Settings(steps=80, batch=4, ks=(2, 3), lr=3e-3, warmup=5, val_every=40, swap=0.5, rotate=0.0)
    config = {**TINY, "fitted": True}
    head = build_context_head(None, **config)
    cache = MapCache(tmp_path / "maps", {"config": config, "ks": (2, 3)}, batches=CHUNK + 5)
    cache = MapCache(tmp_path / "maps", {"config": config, "ks": (2, 3)}, batches=CHUNK + 5)  # tuples read back
    episodes = Episodes(data, settings, input_pool(head))
    assert not cache.fill(episodes, head, minutes=0.0, log=lambda s: None)  # stopped before any chunk
    assert cache.fill(episodes, head, log=lambda s: None) and cache.missing() == []
    stamp = (tmp_path / "maps" / "chunk-0000.pt").stat().st_mtime_ns
    assert cache.fill(episodes, head, log=lambda s: None)
    assert (tmp_path / "maps" / "chunk-0000.pt").stat().st_mtime_ns == stamp  # nothing computed twice
    maps, targets = cache.batch(3, 4)
    assert maps.shape[:2] == (4, head.local[0][0].in_channels) and targets.shape == (4, 1, 32, 32)
    result = train(tmp_path / "run", data, val, settings, config, log=lambda s: None, maps=cache)
    assert result["done"] and result["best"] > 0.8
    with pytest.raises(ValueError, match="other settings"):
        MapCache(tmp_path / "maps", {"config": TINY}, batches=CHUNK)


def test_a_residual_head_starts_as_the_fitted_scorers_map():
    """Untrained, a residual head's probability is the training-free proposer's own ("mean" of prototype and
    probe), so it can only learn corrections to what the proposer was tuned on."""
    from napari_matchseg.modeling.relational_head import fitted_maps

    torch.manual_seed(0)
    head = RelationalHead(width=8, fitted=True, residual=True).eval()
    q, qv, refs, frac, valid = _inputs(b=1)
    with torch.no_grad():
        prob = torch.sigmoid(head(q, qv, refs, frac, valid))
    expected = (fitted_maps(q, refs, frac, valid) + 0.5).mean(1, keepdim=True).clamp(1e-4, 1 - 1e-4)
    torch.testing.assert_close(prob[..., :48, :], expected[..., :48, :], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="fitted"):
        RelationalHead(residual=True)


def test_cross_subject_episodes_never_take_a_reference_of_the_query_s_own_subject():
    """Slices of one patient (ids ``patient__slice``) are near copies of each other; a bank holds other patients,
    so training episodes with ``cross_subject`` draw their references from other subjects only."""
    from test_context_head import _toy_datasets

    from napari_matchseg.training.context_head import Episodes, Item, subject

    items = _toy_datasets(n=12)["toy0"]
    named = [Item(it.features, it.fraction, it.valid, f"toy/p{i // 4}__s{i % 4}") for i, it in enumerate(items)]
    named.append(Item(items[0].features, items[0].fraction, items[0].valid, "toy/alone"))
    assert subject("toy/p1__s3") == "toy/p1" and subject("toy/alone") == "toy/alone"
    same = Episodes({"toy": named}, Settings(cross_subject=False))
    other = Episodes({"toy": named}, Settings(cross_subject=True))
    for q in range(len(named)):
        mine = {i for i in range(len(named)) if i != q and subject(named[i].name) == subject(named[q].name)}
        assert set(same.candidates("toy", q).tolist()) >= mine
        assert not set(other.candidates("toy", q).tolist()) & mine
        assert len(other.candidates("toy", q)) == len(named) - 1 - len(mine)
    one = Episodes({"toy": named[:4]}, Settings(cross_subject=True))  # a single subject: every other image
    assert len(one.candidates("toy", 0)) == 3
    q, *_ = other.batch(0)
    assert q.shape[0] == Settings.batch


@pytest.mark.slow
def test_a_pixel_level_loss_trains_on_the_masks_pixels(tmp_path):
    """With ``pixel_loss`` the target is the query's mask at the input's scale (a kept mask, else its cells
    repeated), swapped with the references; the map, upsampled as the proposer upsamples it, still learns the toy
    tasks."""
    from test_context_head import _toy_datasets

    from napari_matchseg.training.context_head import Episodes, Item, episode_tensors, input_pool, loss_fn

    items = _toy_datasets(n=3)["toy0"]
    *_, cells = episode_tensors(items[0], items[1:])
    *_, pixels = episode_tensors(items[0], items[1:], pixels=True)
    assert cells.shape == (1, 32, 32) and pixels.shape == (1, 128, 128)
    torch.testing.assert_close(pixels[:, ::4, ::4], cells)
    fine = torch.zeros(1, 128, 128, dtype=torch.uint8)
    fine[0, 5:9, 7:50] = 1  # thinner than a cell: only the pixels show it
    kept = Item(items[0].features, items[0].fraction, items[0].valid, "toy/x", pixels=fine)
    *_, target = episode_tensors(kept, items[1:], pixels=True)
    *_, swapped = episode_tensors(kept, items[1:], swap=True, pixels=True)
    assert torch.equal(target, fine.float()) and torch.equal(swapped, 1 - fine.float())
    logits = torch.zeros(1, 1, 32, 32, requires_grad=True)
    loss_fn(logits, target[None], torch.ones(1, 1, 32, 32)).backward()
    assert logits.grad[0, 0, 1:3, 1:13].sum() < 0 < logits.grad[0, 0, 20:, 20:].sum()  # up under the line only
    data = _toy_datasets()
    val = {n: [(its[0], its[1:5])] for n, its in _toy_datasets(seed=1).items()}
    settings = Settings(steps=100, batch=4, ks=(2, 3), lr=3e-3, warmup=5, val_every=50, swap=0.5, rotate=0.0,
                        pixel_loss=True)
    head = build_context_head(None, **TINY)
    assert Episodes(data, settings, input_pool(head)).batch(0)[-1].shape == (4, 1, 128, 128)
    result = train(tmp_path / "run", data, val, settings, TINY, log=lambda s: None)
    assert result["done"] and result["best"] > 0.8
