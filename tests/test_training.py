"""Episodic training, resume and fine-tuning on tiny real subsets with a tiny model."""

import numpy as np
import pytest
import torch

from conftest import TINY_MATCHSEG, dataset_dir
from napari_matchseg.bank import ReferenceBank
from napari_matchseg.checkpoint import build_matchseg, save_checkpoint
from napari_matchseg.errors import InputError
from napari_matchseg.modeling import MatchSeg, MatchSegConfig, add_interaction
from napari_matchseg.training.augment import augment
from napari_matchseg.training.data import load_split, neighbours
from napari_matchseg.training.losses import segmentation_loss
from napari_matchseg.training.synthetic import synthetic_task
from napari_matchseg.training.train import Task, TrainConfig, sample_batch, train

TINY = MatchSegConfig(**TINY_MATCHSEG).to_dict()


@pytest.fixture(scope="module")
def tiny_tasks():
    root = dataset_dir("kvasir").parent
    tasks = {}
    for name in ("kvasir", "wbc"):
        tr = load_split(root, name, "train", 64, limit=16)
        va = load_split(root, name, "val", 64, limit=6)
        tasks[name] = Task(tr, va, neighbours(tr.vectors, tr.vectors, 8, True),
                           neighbours(va.vectors, tr.vectors, 8, False))
    return tasks


def _cfg(tmp_path, **kw):
    base = dict(data_root="unused", out_dir=str(tmp_path / "run"), datasets=("kvasir", "wbc"), steps=40,
                batch_size=4, k_min=1, k_max=3, lr=3e-3, warmup=5, val_every=20, model=TINY, seed=3, threads=2)
    base.update(kw)
    return TrainConfig(**base)


def test_synthetic_tasks_and_augmentation_are_well_formed():
    rng = np.random.default_rng(0)
    imgs, masks = synthetic_task(rng, 5, 64)
    assert imgs.shape == (5, 3, 64, 64) and masks.shape == (5, 1, 64, 64)
    assert 0 <= imgs.min() and imgs.max() <= 1 and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (masks.sum((1, 2, 3)) > 0).all()
    a, b = augment(imgs, masks, rng)
    assert a.shape == imgs.shape and set(b.unique().tolist()) <= {0.0, 1.0}


def test_ignored_pixels_contribute_no_loss():
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    w = torch.ones_like(target)
    w[:, :, :4] = 0
    changed = logits.clone()
    changed[:, :, :4] = 50.0  # wildly wrong where ignored
    assert torch.allclose(segmentation_loss(logits, target, w), segmentation_loss(changed, target, w))


@pytest.mark.slow
def test_training_reduces_the_loss_on_real_crops(tiny_tasks, tmp_path):
    cfg = _cfg(tmp_path, steps=60, synthetic_fraction=0.0)
    torch.manual_seed(cfg.seed)
    fixed = sample_batch(tiny_tasks, cfg, np.random.default_rng(999), 64)

    def loss_of(model):
        model.eval()
        with torch.no_grad():
            return float(segmentation_loss(model(fixed[0], fixed[2], fixed[3]), fixed[1]))

    torch.manual_seed(cfg.seed)
    before = loss_of(MatchSeg(MatchSegConfig.from_dict(TINY)))
    result = train(cfg, tasks=tiny_tasks, log=lambda m: None)
    after = loss_of(build_matchseg(result["best_checkpoint"])[0])
    assert after < before * 0.9, (before, after)
    assert set(result["best_val"]) == {"kvasir", "wbc"}


@pytest.mark.slow
def test_resume_continues_exactly(tiny_tasks, tmp_path):
    straight = train(_cfg(tmp_path / "a", steps=6, val_every=3), tasks=tiny_tasks, log=lambda m: None)
    from napari_matchseg.errors import Cancelled

    calls = iter([False, False, False, True])
    with pytest.raises(Cancelled, match="resume"):
        train(_cfg(tmp_path / "b", steps=6, val_every=3), tasks=tiny_tasks, log=lambda m: None,
              cancel=lambda: next(calls, False))
    resumed = train(_cfg(tmp_path / "b", steps=6, val_every=3), tasks=tiny_tasks, log=lambda m: None)
    a = torch.load(tmp_path / "a" / "run" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "run" / "last.pt", weights_only=True)["model"]
    assert resumed["steps"] == straight["steps"] == 6
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_finetune_on_a_bank_changes_the_weights(tmp_path):
    from napari_matchseg.sample_data import make_sample
    from napari_matchseg.training.finetune import finetune

    torch.manual_seed(0)
    base = save_checkpoint(tmp_path / "base.safetensors", MatchSeg(MatchSegConfig.from_dict(TINY)))
    bank = ReferenceBank.create(tmp_path / "bank")
    bank.add_many((img, m, name) for name, img, m in make_sample("ultrasound", 6))
    out = finetune(bank, tmp_path / "tuned.safetensors", base=base, steps=6, batch_size=2, log=lambda m: None)
    tuned, meta = build_matchseg(out)
    orig, _ = build_matchseg(base)
    assert meta["finetuned_on"] == str(bank.path) and meta["references"] == 6
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), orig.state_dict().values()))
    with pytest.raises(FileExistsError):
        finetune(bank, out, base=base, steps=2, log=lambda m: None)


def test_a_support_free_network_grows_an_interaction():
    torch.manual_seed(0)
    plain = MatchSeg(MatchSegConfig.from_dict({**TINY, "interaction": "none"})).eval()
    grown = add_interaction(plain).eval()
    assert grown.config.interaction == "joint_attention" and not plain.uses_supports
    for name, tensor in plain.encoder.state_dict().items():
        assert torch.equal(grown.encoder.state_dict()[name], tensor)
    q, s = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 3, 64, 64)
    m = (torch.rand(2, 3, 1, 64, 64) > 0.5).float()
    with torch.no_grad():
        start = grown(q, s, m)
        # the new paths start at zero: other supports, other masks, same prediction ...
        torch.testing.assert_close(grown(q, torch.rand_like(s), 1 - m), start)
        # ... which follows the U-Net's (only the head's new shortcut is normalised)
        plain_out = plain(q)
    corr = torch.corrcoef(torch.stack([start.flatten(), plain_out.flatten()]))[0, 1]
    assert corr > 0.8, corr
    with pytest.raises(ValueError, match="already has"):
        add_interaction(grown)


@pytest.mark.slow
def test_training_from_a_unet_checkpoint_adds_the_interaction(tiny_tasks, tmp_path):
    torch.manual_seed(0)
    unet = save_checkpoint(tmp_path / "unet.safetensors",
                           MatchSeg(MatchSegConfig.from_dict({**TINY, "interaction": "none"})))
    result = train(_cfg(tmp_path, steps=8, val_every=8, init_checkpoint=str(unet), interaction="joint_attention"),
                   tasks=tiny_tasks, log=lambda m: None)
    model, meta = build_matchseg(result["best_checkpoint"])
    assert model.config.interaction == "joint_attention" and meta["init"] == str(unet)
    q, s = torch.rand(1, 3, 64, 64), torch.rand(1, 2, 3, 64, 64)
    m = (torch.rand(1, 2, 1, 64, 64) > 0.5).float()
    with torch.no_grad():  # trained, the supports now change the prediction
        assert not torch.allclose(model(q, s, m), model(q, s, 1 - m))
    with pytest.raises(InputError, match="support-free"):
        train(_cfg(tmp_path / "other", steps=2, init_checkpoint=result["best_checkpoint"], interaction="none"),
              tasks=tiny_tasks, log=lambda m: None)
    # without a checkpoint, interaction picks the new network's
    plain = train(_cfg(tmp_path / "plain", steps=2, val_every=2, interaction="none"), tasks=tiny_tasks,
                  log=lambda m: None)
    assert build_matchseg(plain["best_checkpoint"])[0].config.interaction == "none"
