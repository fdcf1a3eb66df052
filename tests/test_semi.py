"""Learning from unlabelled images: pseudo-labels, confident-pixel masking, the loop, resume, `matchseg semi`."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from conftest import dataset_dir, load_real, real_ids
from napari_matchseg.bank import ReferenceBank
from napari_matchseg.checkpoint import build_matchseg
from napari_matchseg.cli import main
from napari_matchseg.errors import Cancelled, InputError
from napari_matchseg.metrics import dice
from napari_matchseg.pseudo_labels import PseudoLabelStore, confident_pseudo_label, refined_pseudo_label
from napari_matchseg.refiners.prompts import Refinement, extract_prompts
from napari_matchseg.training.augment import cutmix
from napari_matchseg.training.losses import segmentation_loss
from napari_matchseg.training.semi import (FINAL_NAME, SemiConfig, Unlabelled, kept_result_name, run_semi,
                                          run_start, semi_batch)
from napari_matchseg.training.data import Split
from napari_matchseg.training.finetune import finetune
from napari_matchseg.training.train import Task, TrainConfig

# the round teacher: these tests follow the stored pseudo-labels; the mean teacher has tests of its own
FAST = dict(warmup_steps=2, rounds=2, steps_per_round=3, labelled_batch=2, unlabelled_batch=2, k=3, k_max=3,
            teacher="round")


def soft(mask: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """A probability map like a model's: certain inside and far outside, uncertain near the boundary."""
    return ndi.gaussian_filter(mask.astype(np.float32), sigma)


@pytest.mark.parametrize("row", [0, 1, 2])
def test_pseudo_labels_from_real_masks(row):
    _, gt = load_real("busi", real_ids("busi", n=3, groups=("benign", "malignant"))[row])
    prob = soft(gt)
    mask, confident = confident_pseudo_label(prob, 0.9)
    assert dice(mask, gt) > 0.95
    assert not confident[(prob > 0.1) & (prob < 0.9)].any()  # below the threshold: left out
    assert confident[(prob >= 0.9) | (prob <= 0.1)].all()
    assert (mask == gt)[confident].mean() > 0.999  # what is kept is right
    edge = gt ^ ndi.binary_erosion(gt, iterations=1)
    assert not confident[edge].all()  # the uncertain boundary is not trusted
    prompts, _ = extract_prompts(prob, 0.95)
    xs, ys = prompts.points[:, 0].astype(int), prompts.points[:, 1].astype(int)
    assert gt[ys[prompts.labels == 1], xs[prompts.labels == 1]].all()
    assert not gt[ys[prompts.labels == 0], xs[prompts.labels == 0]].any()


def test_sam_refined_pseudo_label_drops_contradicted_pixels():
    _, gt = load_real("busi", real_ids("busi", n=1, groups=("benign",))[0])
    prob = soft(gt)

    class Refiner:  # stands in for SAM 2 / LiteMedSAM: returns a mask that is the truth shifted by 5 px
        name = "stand-in"

        def refine(self, image, p, threshold, margin):
            return Refinement(np.roll(gt, 5, axis=1), None, True, "refined")

    mask, confident, method, _ = refined_pseudo_label(Refiner(), np.zeros(gt.shape, np.uint8), prob, 0.9)
    assert method == "stand-in" and np.array_equal(mask, np.roll(gt, 5, axis=1))
    sure_fg, sure_bg = prob >= 0.9, prob <= 0.1
    assert not confident[(sure_fg & ~mask) | (sure_bg & mask)].any()
    assert confident[sure_fg & mask].all()

    class Empty:
        def refine(self, image, p, threshold, margin):
            return Refinement(p >= 0.5, None, False, "not refined: empty proposal")

    mask, confident, method, note = refined_pseudo_label(Empty(), np.zeros(gt.shape, np.uint8), prob, 0.9)
    assert method == "confident" and "empty" in note and np.array_equal(mask, prob >= 0.5)


def test_store_marks_pseudo_labels_and_survives_a_torn_record(tmp_path):
    store = PseudoLabelStore(tmp_path / "p")
    m = np.zeros((20, 30), bool)
    m[5:10, 5:20] = True
    c = np.ones_like(m)
    c[0] = False
    rec = store.add("a", m, c, round=0, method="confident")
    assert rec["kind"] == "pseudo_label" and rec["reviewed"] is False
    assert json.loads((tmp_path / "p" / "info.json").read_text())["reviewed"] is False
    with open(tmp_path / "p" / "labels.jsonl", "a") as f:
        f.write('{"name": "b", "kind": "pseu')  # a crash mid-line
    again = PseudoLabelStore(tmp_path / "p")
    assert "a" in again and "b" not in again and len(again) == 1
    mm, cc = again.load("a")
    assert np.array_equal(mm, m) and np.array_equal(cc, c)
    with pytest.raises(InputError, match="differ"):
        store.add("c", m, c[:5])


def test_only_the_most_reliable_pseudo_labels_are_selected(tmp_path):
    from napari_matchseg.training.semi import agreement as _agreement, select_reliable

    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    assert _agreement(a, a) == 1.0 and _agreement(a, ~a) == 0.0 and _agreement(a & False, a & False) == 1.0
    store = PseudoLabelStore(tmp_path / "p")
    for name, rel in (("a", 0.2), ("b", 0.9), ("c", 0.5), ("d", 0.95)):
        store.add(name, a, a, reliability=rel)
    assert select_reliable(store, ["a", "b", "c", "d"], 0.5) == [1, 3]
    assert select_reliable(store, ["a", "b", "c", "d"], 1.0) == [0, 1, 2, 3]
    assert select_reliable(store, ["a"], 0.1) == [0]
    with pytest.raises(InputError, match=r"'foreground_confidence' score \(a, b\);"):  # made before it existed
        select_reliable(store, ["a", "b"], 0.5, by="confidence")


def test_foreground_confidence_scores_the_object_not_the_background(tmp_path):
    from napari_matchseg.training.semi import foreground_confidence, select_reliable

    sure, unsure = np.full((20, 20), 0.01, np.float32), np.full((20, 20), 0.01, np.float32)
    sure[5:10, 5:10], unsure[5:10, 5:10] = 0.99, 0.6
    assert foreground_confidence(sure) == pytest.approx(0.99)
    assert foreground_confidence(unsure) == pytest.approx(0.6)  # the background's 0.99 does not hide it
    assert foreground_confidence(np.full((4, 4), 0.2, np.float32)) == pytest.approx(0.8)  # nothing found
    store = PseudoLabelStore(tmp_path / "p")
    m = sure >= 0.5
    for name, rel, fg in (("a", 0.9, 0.6), ("b", 0.5, 0.99), ("c", 0.8, 0.7)):
        store.add(name, m, m, reliability=rel, foreground_confidence=fg)
    assert select_reliable(store, ["a", "b", "c"], 0.34, by="agreement") == [0]
    assert select_reliable(store, ["a", "b", "c"], 0.34, by="confidence") == [1]
    assert select_reliable(store, ["a", "b", "c"], 0.67, by="confidence") == [1, 2]
    with pytest.raises(InputError, match="select"):
        SemiConfig(select="entropy").check()


def _tiny_unlabelled(size=64, n=3, confident=1):
    imgs = torch.randint(0, 255, (n, 3, size, size), dtype=torch.uint8)
    masks = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    masks[:, :, 16:48, 16:48] = 1
    return Unlabelled([f"u{i}" for i in range(n)], imgs, np.zeros((n, 4), np.int64), masks,
                      torch.full((n, 1, size, size), confident, dtype=torch.uint8))


def _tiny_bank_task(size=64, n=4):
    imgs = torch.randint(0, 255, (n, 3, size, size), dtype=torch.uint8)
    masks = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    masks[:, :, 10:30, 10:30] = 1
    nn = np.array([[j for j in range(n) if j != i] for i in range(n)])
    return Task(Split("bank", [f"b{i}" for i in range(n)], imgs, masks, np.eye(n)), None, nn, None)


def test_pixels_below_the_confidence_threshold_contribute_no_loss():
    cfg = SemiConfig(labelled_batch=2, unlabelled_batch=3, synthetic_fraction=0.0)
    tcfg = TrainConfig(data_root="x", out_dir="x", datasets=("bank",), k_min=1, k_max=3, synthetic_fraction=0.0)
    bank = _tiny_bank_task()
    q, qm, s, sm, w = semi_batch(bank, _tiny_unlabelled(confident=0), cfg, tcfg, np.random.default_rng(0), 64)
    assert q.shape[0] == qm.shape[0] == s.shape[0] == w.shape[0] == 5
    assert (w[:2] == 1).all() and (w[2:] == 0).all()  # labelled: every pixel; unconfident: none
    logits = torch.randn_like(qm)
    wild = logits.clone()
    wild[2:] = 40.0
    assert torch.equal(segmentation_loss(logits, qm, w), segmentation_loss(wild, qm, w))
    *_, w1 = semi_batch(bank, _tiny_unlabelled(confident=1), cfg, tcfg, np.random.default_rng(0), 64)
    assert w1[2:].sum() > 0.5 * w1[2:].numel()  # confident pixels count (minus padding and cut-out)


class _ConstantTeacher(torch.nn.Module):
    """A stand-in network whose every pixel has the same logit (the FixMatch plumbing, not a model, is tested)."""

    def __init__(self, logit: float):
        super().__init__()
        self.logit = torch.nn.Parameter(torch.tensor(logit))

    def forward(self, query, supports, support_masks):
        assert supports.shape[:2] == support_masks.shape[:2] and supports.shape[0] == query.shape[0]
        return self.logit.expand(query.shape[0], 1, *query.shape[-2:])


def test_a_mean_teacher_labels_the_weak_view_and_only_its_confident_pixels_count():
    cfg = SemiConfig(labelled_batch=2, unlabelled_batch=3, synthetic_fraction=0.0, confidence=0.9)
    tcfg = TrainConfig(data_root="x", out_dir="x", datasets=("bank",), k_min=1, k_max=3, synthetic_fraction=0.0)
    bank, unl = _tiny_bank_task(), _tiny_unlabelled(confident=1)
    unl.masks = unl.confident = None  # the teacher needs no stored pseudo-labels
    batches = {logit: semi_batch(bank, unl, cfg, tcfg, np.random.default_rng(0), 64, _ConstantTeacher(logit))
               for logit in (5.0, -5.0, 0.5)}  # p = 0.993 (foreground), 0.007 (background), 0.62 (unsure)
    for logit, (q, qm, s, sm, w) in batches.items():
        assert q.shape[0] == qm.shape[0] == s.shape[0] == w.shape[0] == 5 and (w[:2] == 1).all()
    assert (batches[5.0][1][2:] == 1).all() and (batches[-5.0][1][2:] == 0).all()
    assert batches[5.0][4][2:].sum() > 0.5 * batches[5.0][4][2:].numel()  # confident: counts (but cut-outs)
    assert (batches[0.5][4][2:] == 0).all()  # below the threshold: no loss at all
    with pytest.raises(InputError, match="teacher 'round'"):
        SemiConfig(teacher="ema", refine="sam2").check()
    # the default: the mean teacher, or the round teacher when SAM 2 refines the round's pseudo-labels
    assert SemiConfig().resolved().teacher == "ema" and SemiConfig(refine="sam2").resolved().teacher == "round"
    assert SemiConfig(teacher="round").resolved().teacher == "round"
    SemiConfig(refine="litemedsam").resolved().check()
    assert SemiConfig(refine="litemedsam").resolved().teacher == "round"
    with pytest.raises(InputError, match="refine must be one of none, sam2, litemedsam"):
        SemiConfig(refine="medsam").check()
    with pytest.raises(InputError, match="teacher must be"):
        SemiConfig(teacher="mean").check()


def test_cutmix_pastes_a_box_of_another_view_with_its_label():
    n, size = 5, 32
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    labels = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, size, size).clone()
    rng = np.random.default_rng(0)
    mixed, mixed_labels = cutmix(images, labels, rng, p=1.0, area=(0.1, 0.4))
    for i in range(n):
        pasted = mixed[i, 0] != i
        assert 0.05 < pasted.float().mean() < 0.5  # one box of about the drawn area, from one other image
        assert len(torch.unique(mixed[i, 0][pasted])) == 1
        assert torch.equal(mixed_labels[i, 0], mixed[i, 0]) and torch.equal(mixed_labels[i, 1], mixed[i, 0])
    assert torch.equal(images[:, 0, 0, 0], torch.arange(n, dtype=torch.float32))  # the inputs are untouched
    state = rng.bit_generator.state
    same, same_labels = cutmix(images, labels, rng, p=0.0)
    assert same is images and same_labels is labels and rng.bit_generator.state == state  # off: no draws
    cfg = SemiConfig(labelled_batch=2, unlabelled_batch=3, synthetic_fraction=0.0)
    tcfg = TrainConfig(data_root="x", out_dir="x", datasets=("bank",), k_min=1, k_max=3, synthetic_fraction=0.0)
    bank, unl = _tiny_bank_task(), _tiny_unlabelled()
    plain = semi_batch(bank, unl, cfg, tcfg, np.random.default_rng(1), 64)
    mixed = semi_batch(bank, unl, dataclasses.replace(cfg, cutmix=1.0), tcfg, np.random.default_rng(1), 64)
    assert torch.equal(plain[0][:2], mixed[0][:2]) and torch.equal(plain[2], mixed[2])  # labelled part, supports
    assert not torch.equal(plain[0][2:], mixed[0][2:])  # the strong views are mixed
    with pytest.raises(InputError, match="cutmix"):
        SemiConfig(cutmix=1.5).check()


@pytest.fixture
def semi_setup(tmp_path, tiny_ckpt):
    ids = real_ids("kvasir", n=10)
    bank = ReferenceBank.create(tmp_path / "bank")
    bank.add_many((*load_real("kvasir", i), i) for i in ids[:5])
    unlabelled = [(i, load_real("kvasir", i)[0], f"kvasir/{i}.png") for i in ids[5:]]
    return bank, unlabelled, tiny_ckpt, tmp_path


@pytest.mark.slow
def test_loop_runs_changes_the_weights_and_leaves_the_bank_alone(semi_setup):
    bank, unlabelled, base, tmp = semi_setup
    bank_json = (bank.path / "bank.json").read_bytes()
    logs = []
    out = run_semi(bank, unlabelled + [("again", bank.load_image(bank.ids()[0]), "x")], tmp / "run", base=base,
                   cfg=SemiConfig(**FAST, refine="sam2"), log=logs.append)
    assert out == tmp / "run" / FINAL_NAME
    assert any("already in the bank" in m for m in logs)
    assert any("SAM 2 refinement unavailable" in m for m in logs)  # offline, no weights: confident labels
    tuned, meta = build_matchseg(out)
    orig, _ = build_matchseg(base)
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), orig.state_dict().values()))
    assert meta["unlabelled_images"] == 5 and len(meta["rounds"]) == 2
    for r in range(2):
        store = PseudoLabelStore(tmp / "run" / "pseudo" / f"round-{r}")
        assert sorted(x["name"] for x in store.records()) == sorted(n for n, _, _ in unlabelled)
        assert all(x["method"] == "confident" and x["kind"] == "pseudo_label" for x in store.records())
        assert all(0.5 <= x["foreground_confidence"] <= 1 for x in store.records())
        assert len(json.loads((store.folder / "selected.json").read_text())) == meta["rounds"][r]["selected"] == 2
    assert (bank.path / "bank.json").read_bytes() == bank_json and len(ReferenceBank.open(bank.path)) == 5
    assert run_semi(bank, unlabelled, tmp / "run", base=base, cfg=SemiConfig(**FAST, refine="sam2"),
                    log=logs.append) == out and "already complete" in logs[-1]
    with pytest.raises(InputError, match=r"other settings \(semi.refine, semi.rounds differ\)"):
        run_semi(bank, unlabelled, tmp / "run", base=base, cfg=SemiConfig(**dict(FAST, rounds=3)))
    with pytest.raises(InputError, match=r"\(semi.refine, semi.teacher differ\)"):  # the default now
        run_semi(bank, unlabelled, tmp / "run", base=base, cfg=SemiConfig(**dict(FAST, teacher="auto")))


@pytest.mark.slow
def test_litemedsam_refines_the_pseudo_labels_with_one_encoding_per_image(semi_setup):
    from napari_matchseg.litemedsam import LiteMedSamPredictor
    from napari_matchseg.refiners.litemedsam import LiteMedSamRefiner

    bank, unlabelled, _, tmp = semi_setup
    refiner = LiteMedSamRefiner(model=LiteMedSamPredictor("cpu"), min_agreement=0.0)  # keep every refined mask
    cfg = SemiConfig(**FAST, refine="litemedsam")
    # from the shipped checkpoint: the tiny test one is never confident enough to give a prompt
    run_semi(bank, unlabelled, tmp / "run", base=None, cfg=cfg, refiner=refiner, log=lambda m: None)
    records = [r for k in range(2) for r in PseudoLabelStore(tmp / "run" / "pseudo" / f"round-{k}").records()]
    assert len(records) == 2 * len(unlabelled)
    refined = [r for r in records if r["method"] == "litemedsam"]
    assert refined and all(r["note"].startswith("refined with") for r in refined)
    assert all(r["note"].startswith("not refined") for r in records if r["method"] != "litemedsam")
    # one embedding per unlabelled image, kept in the run folder for the next round (and a resumed run)
    assert refiner.predictor.encodings == len(unlabelled)
    assert len(list((tmp / "run" / "features").glob("*/*.npy"))) == len(unlabelled)
    # a refined pseudo-label keeps the model's own mask beside it (what refinement changed)
    store = PseudoLabelStore(tmp / "run" / "pseudo" / "round-0")
    for rec in store.records():
        kept = (store.folder / "unrefined" / f"{rec['name']}.png").is_file()
        assert kept == (rec["method"] == "litemedsam") == bool(rec.get("has_unrefined"))
        before, (after, _) = store.load_unrefined(rec["name"]), store.load(rec["name"])
        assert before.shape == after.shape and (kept or np.array_equal(before, after))
    assert any(not np.array_equal(store.load_unrefined(r["name"]), store.load(r["name"])[0])
               for r in store.records() if r["method"] == "litemedsam")


@pytest.mark.slow
def test_runs_share_a_refiners_embeddings_folder(semi_setup):
    from napari_matchseg.litemedsam import LiteMedSamPredictor
    from napari_matchseg.refiners.litemedsam import LiteMedSamRefiner

    bank, unlabelled, _, tmp = semi_setup
    cfg = SemiConfig(**dict(FAST, rounds=1), refine="litemedsam")
    for run, expected in (("one", len(unlabelled)), ("two", 0)):  # the second run reads the first one's files
        refiner = LiteMedSamRefiner(model=LiteMedSamPredictor("cpu"), min_agreement=0.0)
        run_semi(bank, unlabelled, tmp / run, cfg=cfg, refiner=refiner, log=lambda m: None,
                 features_dir=tmp / "shared")
        assert refiner.predictor.encodings == expected
    assert len(list((tmp / "shared" / "features").glob("*/*.npy"))) == len(unlabelled)
    assert not (tmp / "one" / "features").exists()


@pytest.mark.slow
def test_cancelled_run_resumes_to_the_same_result(semi_setup):
    bank, unlabelled, base, tmp = semi_setup
    straight = run_semi(bank, unlabelled, tmp / "a", base=base, cfg=SemiConfig(**FAST), log=lambda m: None)
    # cancel() is asked once per training step and once per image to pseudo-label (done or not); each run below
    # resumes the last one: during the warm-up (its 2nd step), round 1's pseudo-labelling (3rd image), its training
    for stop_after, state in ((2, "warmup.safetensors.run"), (4, "pseudo/round-0"), (7, "train-round-0")):
        calls = {"n": 0}

        def cancel():
            calls["n"] += 1
            return calls["n"] == stop_after

        with pytest.raises(Cancelled, match="same command"):
            run_semi(bank, unlabelled, tmp / "b", base=base, cfg=SemiConfig(**FAST), cancel=cancel, log=lambda m: None)
        assert (tmp / "b" / state).is_dir()
    assert (tmp / "b" / "warmup.safetensors").exists() and (tmp / "b" / "train-round-0" / "last.pt").exists()
    resumed = run_semi(bank, unlabelled, tmp / "b", base=base, cfg=SemiConfig(**FAST), log=lambda m: None)
    lines = (tmp / "b" / "pseudo" / "round-0" / "labels.jsonl").read_text().splitlines()
    assert len(lines) == len(unlabelled)  # nothing pseudo-labelled twice
    a, b = build_matchseg(straight)[0].state_dict(), build_matchseg(resumed)[0].state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_a_mean_teacher_run_resumes_to_the_same_result(semi_setup):
    bank, unlabelled, base, tmp = semi_setup
    cfg = dict(FAST, warmup_steps=0, rounds=1, steps_per_round=4, teacher="ema", ema_decay=0.5, confidence=0.5)
    straight = run_semi(bank, unlabelled, tmp / "a", base=base, cfg=SemiConfig(**cfg), log=lambda m: None)
    calls = {"n": 0}

    def cancel():  # asked once per image to pseudo-label (5), then once per training step: stop before step 3
        calls["n"] += 1
        return calls["n"] == len(unlabelled) + 3

    with pytest.raises(Cancelled, match="same command"):
        run_semi(bank, unlabelled, tmp / "b", base=base, cfg=SemiConfig(**cfg), cancel=cancel, log=lambda m: None)
    state = torch.load(tmp / "b" / "train-round-0" / "last.pt", weights_only=True)
    assert state["step"] == 2 and state["teacher"].keys() == state["model"].keys()
    assert any(not torch.equal(state["teacher"][k], state["model"][k]) for k in state["model"])  # it lags behind
    resumed = run_semi(bank, unlabelled, tmp / "b", base=base, cfg=SemiConfig(**cfg), log=lambda m: None)
    a, b = build_matchseg(straight)[0].state_dict(), build_matchseg(resumed)[0].state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    assert json.loads((tmp / "b" / "config.json").read_text())["semi"]["teacher"] == "ema"
    assert build_matchseg(tmp / "b" / "round-0.safetensors")[1]["weights"].startswith("mean teacher")  # the result


@pytest.mark.slow
def test_more_rounds_continue_a_finished_run_and_keep_its_result(semi_setup):
    bank, unlabelled, base, tmp = semi_setup
    one, two = SemiConfig(**dict(FAST, rounds=1)), SemiConfig(**FAST)
    straight = run_semi(bank, unlabelled, tmp / "a", base=base, cfg=two, log=lambda m: None)
    first = run_semi(bank, unlabelled, tmp / "b", base=base, cfg=one, log=lambda m: None)
    first_bytes = first.read_bytes()
    logs = []
    more = run_semi(bank, unlabelled, tmp / "b", base=base, cfg=two, log=logs.append, new_run_if_different=True)
    assert more == tmp / "b" / FINAL_NAME and not (tmp / "b-2").exists()  # the plugin's path: continued, not anew
    assert any("adding rounds 2-2" in m for m in logs)
    assert (tmp / "b" / kept_result_name(1)).read_bytes() == first_bytes  # the 1-round result is kept
    assert json.loads((tmp / "b" / "config.json").read_text())["semi"]["rounds"] == 2
    assert len(build_matchseg(more)[1]["rounds"]) == 2
    a, b = build_matchseg(straight)[0].state_dict(), build_matchseg(more)[0].state_dict()
    for key in a:  # as if it had been started with two rounds
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    with pytest.raises(InputError, match=r"semi.rounds differ; its result after 1 rounds is round-0.safetensors"):
        run_semi(bank, unlabelled, tmp / "b", base=base, cfg=one)
    assert run_start(more, bank) == str(base) and run_start(base, bank) == base and run_start(None, bank) is None
    other = ReferenceBank.create(tmp / "other-bank")
    assert run_start(more, other) == more  # a result learnt on another bank is where a run there starts


@pytest.mark.slow
def test_a_run_is_the_same_run_however_its_bank_is_spelt(semi_setup, monkeypatch):
    bank, unlabelled, base, tmp = semi_setup
    cfg = SemiConfig(**dict(FAST, warmup_steps=0, rounds=1, steps_per_round=1))
    monkeypatch.chdir(tmp)  # started from the folder that holds the bank, with relative paths
    run_semi(ReferenceBank.open("bank"), unlabelled, "run", base=os.path.relpath(base), cfg=cfg, log=lambda m: None)
    out = tmp / "run" / FINAL_NAME
    config = json.loads((tmp / "run" / "config.json").read_text())
    assert config["bank"] == str(tmp / "bank") and config["base"] == str(base)  # recorded absolute
    assert {r["checkpoint"] for r in PseudoLabelStore(tmp / "run" / "pseudo" / "round-0").records()} == {str(base)}
    monkeypatch.chdir(tmp / "run")  # the same run, asked for from another working folder
    logs = []
    assert run_semi(ReferenceBank.open("../bank"), unlabelled, tmp / "run", base=base, cfg=cfg,
                    log=logs.append) == out and "already complete" in logs[-1]
    assert run_start(tmp / "run" / FINAL_NAME, ReferenceBank.open("../bank")) == str(base)


@pytest.mark.slow
def test_semi_command_end_to_end(semi_setup, capsys):
    bank, unlabelled, base, tmp = semi_setup
    folder = tmp / "unlabelled"
    folder.mkdir()
    for name, _, _ in unlabelled:
        (folder / f"{name}.png").symlink_to(dataset_dir("kvasir") / "images" / f"{name}.png")
    code = main(["semi", "--bank", str(bank.path), "--unlabelled", str(folder), "--checkpoint", str(base),
                 "--rounds", "1", "--steps", "2", "-k", "3", "--select", "confidence", "--embeddings",
                 str(tmp / "embeddings")])
    out = capsys.readouterr().out
    assert code == 0 and "fine-tuned checkpoint" in out
    assert (tmp / "bank.semi" / FINAL_NAME).exists()
    store = PseudoLabelStore(tmp / "bank.semi" / "pseudo" / "round-0")
    assert len(store) == len(unlabelled)
    assert json.loads((tmp / "bank.semi" / "config.json").read_text())["semi"]["select"] == "confidence"
    by_confidence = sorted(store.records(), key=lambda r: -r["foreground_confidence"])
    chosen = json.loads((store.folder / "selected.json").read_text())
    assert set(chosen) == {r["name"] for r in by_confidence[:len(chosen)]}
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code = main(["semi", "--bank", str(bank.path), "--unlabelled", str(folder), "--checkpoint", str(base),
                 "--out", str(tmp / "other")])
    assert code != 0 and "broken.png" in capsys.readouterr().err


@pytest.mark.slow
def test_warm_up_is_skipped_for_a_checkpoint_already_tuned_on_the_bank(semi_setup, monkeypatch):
    bank, unlabelled, base, tmp = semi_setup
    tuned = finetune(bank, tmp / "tuned.safetensors", base=base, steps=2, batch_size=2, k_max=3, log=lambda m: None)
    logs = []
    monkeypatch.chdir(tmp)  # the same bank, spelt relative this time
    run_semi(ReferenceBank.open("bank"), unlabelled, tmp / "run", base=tuned, cfg=SemiConfig(**dict(FAST, rounds=1)),
             log=logs.append)
    assert any("already fine-tuned on this bank" in m for m in logs)
    assert not (tmp / "run" / "warmup.safetensors").exists()
    run_semi(bank, unlabelled, tmp / "run2", base=base, cfg=SemiConfig(**dict(FAST, rounds=1)), log=logs.append)
    assert (tmp / "run2" / "warmup.safetensors").exists()  # the untuned start gets its warm-up
