"""`matchseg segment | eval | demo` end to end (a tiny random checkpoint, and the shipped one for demo)."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import dataset_dir, real_ids
from napari_matchseg.checkpoint import DEFAULT_CHECKPOINT
from napari_matchseg.cli import main



@pytest.fixture
def kvasir_subset(tmp_path):
    d = dataset_dir("kvasir")
    for folder, split, n in (("ref", "train", 12), ("query", "test", 4)):
        for sub in ("images", "masks"):
            (tmp_path / folder / sub).mkdir(parents=True)
        for rid in real_ids("kvasir", split, n=n):
            for sub in ("images", "masks"):
                (tmp_path / folder / sub / f"{rid}.png").symlink_to(d / sub / f"{rid}.png")
    return tmp_path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_segment_and_eval_on_real_images(kvasir_subset, tiny_ckpt, capsys):
    t = kvasir_subset
    assert run(capsys, "bank", "add", t / "bank", "--images", t / "ref/images", "--masks", t / "ref/masks")[0] == 0
    code, out, err = run(capsys, "segment", "--bank", t / "bank", "--images", t / "query/images", "--out", t / "out",
                         "--checkpoint", tiny_ckpt, "-k", "3")
    assert code == 0, err
    for img in (t / "query/images").iterdir():
        mask = np.array(Image.open(t / "out" / img.name))
        assert mask.shape == np.array(Image.open(img)).shape[:2] and set(np.unique(mask)) <= {0, 255}
    code, _, err = run(capsys, "segment", "--bank", t / "bank", "--images", t / "query/images", "--out", t / "out",
                       "--checkpoint", tiny_ckpt)
    assert code == 2 and "already exist" in err and "--overwrite" in err
    code, out, err = run(capsys, "eval", "--bank", t / "bank", "--images", t / "query/images", "--masks",
                         t / "query/masks", "--checkpoint", tiny_ckpt, "-k", "2", "--json", t / "r.json")
    assert code == 0, err
    res = json.loads((t / "r.json").read_text())
    assert res["n"] == 4 and 0 <= res["dice_mean"] <= 1 and 0 <= res["iou_mean"] <= 1 and len(res["rows"]) == 4
    assert len(res["rows"][0]["supports"].split()) == 2
    assert (t / "r.csv").read_text().startswith("image,dice,iou,hd95")
    assert not res["mirror_tta"]
    code, out, err = run(capsys, "eval", "--bank", t / "bank", "--images", t / "query/images", "--masks",
                         t / "query/masks", "--checkpoint", tiny_ckpt, "-k", "2", "--mirror-tta",
                         "--json", t / "m.json")
    assert code == 0, err
    mirrored = json.loads((t / "m.json").read_text())
    assert mirrored["mirror_tta"] and mirrored["n"] == 4


def test_segment_refuses_bad_options(tmp_path, tiny_ckpt, capsys):
    from napari_matchseg.sample_data import write_sample

    write_sample(tmp_path / "s", n_per_kind=3)
    run(capsys, "bank", "add", tmp_path / "b", "--images", tmp_path / "s/images", "--masks", tmp_path / "s/masks")
    code, _, err = run(capsys, "segment", "--bank", tmp_path / "b", "--images", tmp_path / "s/images", "--out",
                       tmp_path / "o", "--checkpoint", tmp_path / "missing.safetensors")
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "segment", "--bank", tmp_path / "b", "--images", tmp_path / "s/images", "--out",
                       tmp_path / "o", "--checkpoint", tiny_ckpt, "--threshold", "1.5")
    assert code == 2 and "threshold" in err
    code, _, err = run(capsys, "segment", "--bank", tmp_path / "b", "--images", tmp_path / "s/images", "--out",
                       tmp_path / "o", "--checkpoint", tiny_ckpt, "-k", "40")
    assert code == 2 and "between 0 and 32" in err
    code, _, err = run(capsys, "segment", "--bank", tmp_path / "b", "--images", tmp_path / "s/images", "--out",
                       tmp_path / "o", "--checkpoint", tiny_ckpt, "-k", "0")
    assert code == 2 and "the matchseg proposer needs at least 1 reference" in err, err
    code, _, err = run(capsys, "segment", "--bank", tmp_path / "b", "--images", tmp_path / "s/images", "--out",
                       tmp_path / "o", "--proposer", "sam2", "--mirror-tta")
    assert code == 2 and "MatchSeg option" in err


def test_demo_runs_offline_with_the_shipped_checkpoint(tmp_path, capsys):
    assert DEFAULT_CHECKPOINT.is_file() and DEFAULT_CHECKPOINT.stat().st_size < 20e6
    code, out, err = run(capsys, "demo", "--out", tmp_path / "demo")
    assert code == 0, err
    assert (tmp_path / "demo" / "overlay.png").is_file()
    assert len(list((tmp_path / "demo" / "masks").glob("*.png"))) == 6
    assert out.count("Dice") == 6
