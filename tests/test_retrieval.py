import numpy as np
import pytest

from conftest import load_real, real_ids
from napari_matchseg.bank import ReferenceBank
from napari_matchseg.retrieval import get_retriever, l2_normalize, retrieve, top_k
from napari_matchseg.retrieval.handcrafted import HandcraftedRetriever


def test_top_k_matches_a_full_sort():
    rng = np.random.default_rng(0)
    v = l2_normalize(rng.normal(size=(500, 32)))
    q = l2_normalize(rng.normal(size=32))
    idx, scores = top_k(v, q, 10)
    expected = np.argsort(-(v @ q))[:10]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores, (v @ q)[expected], rtol=1e-6)
    assert np.all(np.diff(scores) <= 0)
    excl = np.zeros(500, bool)
    excl[expected[:3]] = True
    idx2, _ = top_k(v, q, 10, excl)
    assert not set(idx2) & set(expected[:3]) and len(idx2) == 10
    assert len(top_k(v[:4], q, 10)[0]) == 4  # k larger than the bank
    with pytest.raises(ValueError, match="dimensions"):
        top_k(v, q[:5], 3)


def test_handcrafted_vectors_are_normalised_and_stable(sample_triples):
    r = HandcraftedRetriever()
    v = r.embed([t[1] for t in sample_triples])
    assert v.shape == (12, r.embed_one(sample_triples[0][1]).shape[0]) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(r.embed([sample_triples[3][1]])[0], v[3], rtol=1e-5)


def test_retrieve_finds_the_same_modality_and_caches_embeddings(bank, sample_triples, monkeypatch):
    retriever = get_retriever("handcrafted")
    calls = []
    original = type(retriever)._embed_batch
    monkeypatch.setattr(type(retriever), "_embed_batch",
                        lambda self, ims: calls.append(len(ims)) or original(self, ims))
    from napari_matchseg.sample_data import make_sample

    query = make_sample("ultrasound", 8, seed=7)[0][1]  # unseen image
    matches = retrieve(bank, retriever, query, k=4)
    assert [m.id.split("_")[0] for m in matches] == ["ultrasound"] * 4
    assert sum(calls) == 12 + 1  # the bank once, then the query
    calls.clear()
    again = retrieve(ReferenceBank.open(bank.path), retriever, query, k=4)
    assert again == matches and sum(calls) == 1  # bank vectors came from the cache on disk
    calls.clear()
    in_bank = sample_triples[7][1]
    m = retrieve(bank, retriever, in_bank, k=3, exclude=["cells_01"])
    assert sum(calls) == 0  # a bank image's own vector is reused
    assert m[0].id == "cells_01" or "cells_01" not in [x.id for x in m]
    m = retrieve(bank, retriever, in_bank, k=3, exclude=["cells_01"])
    assert "cells_01" not in [x.id for x in m] and m[0].score >= m[1].score >= m[2].score


def test_new_references_are_embedded_incrementally(bank, sample_triples):
    r = get_retriever("handcrafted")
    v1 = bank.embeddings(r)
    from napari_matchseg.sample_data import make_sample

    name, img, mask = make_sample("cells", 1, seed=3)[0]
    bank.add(img, mask, name="late")
    v2 = bank.embeddings(r)
    assert v2.shape[0] == v1.shape[0] + 1
    np.testing.assert_allclose(v2[:-1], v1)
    store = bank.embedding_store(r.model_id)
    assert store.count == 13 and store.generation == 2
    bank.remove("late")
    assert bank.embeddings(r).shape[0] == 12


def _perturb(img, kind, rng):
    f = img.astype(np.float32)
    if kind == "fliplr":
        f = f[:, ::-1]
    elif kind == "flipud":
        f = f[::-1]
    elif kind == "noise":
        f = f + rng.normal(0, 10, f.shape)
    elif kind == "brightness":
        f = f * 0.8 + 30
    return np.clip(f, 0, 255).astype(np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["busi", "kvasir", "wbc"])
def test_perturbed_real_images_find_their_original_top1(tmp_path, dataset):
    ids = real_ids(dataset, "train", n=60, stride=5)
    bank = ReferenceBank.create(tmp_path / "b")
    pairs = [load_real(dataset, i) for i in ids]
    bank.add_many(((img, m, rid) for rid, (img, m) in zip(ids, pairs)), allow_empty=True)
    r = get_retriever("handcrafted")
    rng = np.random.default_rng(0)
    misses = []
    for rid, (img, _) in list(zip(ids, pairs))[::4]:
        for kind in ("fliplr", "flipud", "noise", "brightness"):
            top = retrieve(bank, r, _perturb(img, kind, rng), k=1)[0]
            if top.id != rid:
                misses.append((rid, kind, top.id))
    assert misses == []
