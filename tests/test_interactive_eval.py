"""The simulated user and ``matchseg eval --interactive`` (NoC@85/90, Dice after 1/3/5 clicks)."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from conftest import load_real, real_ids
from napari_matchseg.cli import main
from napari_matchseg.simulated_user import clicks_to_reach, next_click, simulate


def _two_squares():
    truth = np.zeros((64, 64), bool)
    truth[5:25, 5:25] = True  # 400 px
    truth[40:50, 40:50] = True  # 100 px
    return truth


def _oracle(truth):
    """A perfect segmenter of the clicked objects: the true parts under positive clicks, minus negative ones."""
    lab, _ = ndi.label(truth)

    def predict(points):
        out = np.zeros(truth.shape, bool)
        for x, y, label in points:
            if label == 1 and lab[int(y), int(x)]:
                out |= lab == lab[int(y), int(x)]
        return out
    return predict


def test_the_simulated_user_clicks_the_centre_of_the_largest_error_and_is_deterministic():
    truth = _two_squares()
    assert next_click(np.zeros_like(truth), truth) == [14.0, 14.0, 1]  # the big square's centre (x, y), positive
    spill = truth.copy()
    spill[30:64, 0:30] = True  # the mask spills over (a larger error than the missed parts): a negative click
    assert next_click(spill, truth)[2] == 0
    assert next_click(truth, truth) is None
    first = simulate(_oracle(truth), truth, max_clicks=10)
    assert first == simulate(_oracle(truth), truth, max_clicks=10)  # the same clicks, the same curve
    assert first[0] == 0.0 and first[1] == pytest.approx(2 * 400 / 900) and first[2] == 1.0
    assert len(first) == 11 and first[-1] == 1.0
    assert clicks_to_reach(first, 0.9) == 2 and clicks_to_reach(first, 0.85) == 1  # 0.889 after one
    assert clicks_to_reach([0.1] * 6, 0.9) == 5  # never reached: max_clicks


def test_a_proposal_that_is_already_good_needs_no_click():
    truth = _two_squares()
    dices = simulate(_oracle(truth), truth, max_clicks=5, first=truth)
    assert dices == [1.0] * 6 and clicks_to_reach(dices, 0.9) == 0


def _write_pairs(folder, name, ids):
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for rid in ids:
        img, m = load_real(name, rid)
        Image.fromarray(img).save(folder / "images" / f"{rid}.png")
        Image.fromarray((m * 255).astype(np.uint8)).save(folder / "masks" / f"{rid}.png")


@pytest.mark.slow
def test_eval_interactive_reports_clicks_with_and_without_references(tmp_path, capsys):
    groups = ("benign", "malignant")
    _write_pairs(tmp_path / "refs", "busi", real_ids("busi", "train", n=3, groups=groups))
    _write_pairs(tmp_path / "test", "busi", real_ids("busi", "val", n=2, groups=groups))
    assert main(["bank", "create", str(tmp_path / "bank")]) == 0
    assert main(["bank", "add", str(tmp_path / "bank"), "--images", str(tmp_path / "refs/images"), "--masks",
                 str(tmp_path / "refs/masks")]) == 0
    common = ["eval", "--images", str(tmp_path / "test/images"), "--masks", str(tmp_path / "test/masks"),
              "--interactive", "--max-clicks", "6", "--proposer", "context"]
    capsys.readouterr()
    runs = {}
    for k in ("3", "0"):
        out = tmp_path / f"k{k}.json"
        code = main(common + ["--bank", str(tmp_path / "bank"), "-k", k, "--json", str(out)])
        assert code == 0, capsys.readouterr().err
        runs[k] = json.loads(out.read_text())
        assert "NoC@90" in capsys.readouterr().out
    for r in runs.values():
        assert r["n"] == 2 and r["max_clicks"] == 6 and set(r["dice_at_clicks"]) == {"1", "3", "5"}
        assert 0 <= r["noc85_mean"] <= r["noc90_mean"] <= 6
        rows = list(csv.DictReader(open(tmp_path / f"k{r['k']}.csv")))
        assert len(rows) == 2 and {"noc85", "noc90", "dice_1_clicks", "dice_5_clicks"} <= set(rows[0])
    assert runs["0"]["dice_mean"] == 0.0 and all(row["supports"] == "" for row in runs["0"]["rows"])
    assert runs["3"]["dice_mean"] > 0.3  # the references' proposal, before any click
    assert runs["3"]["dice_at_clicks"]["5"] >= runs["3"]["dice_mean"] - 0.05


def test_eval_interactive_refuses_a_proposer_without_clicks_and_dask(tmp_path, capsys, tiny_ckpt):
    folder = tmp_path / "x"
    _write_pairs(folder, "busi", real_ids("busi", "val", n=1, groups=("benign",)))
    assert main(["bank", "create", str(tmp_path / "bank")]) == 0
    assert main(["bank", "add", str(tmp_path / "bank"), "--images", str(folder / "images"), "--masks",
                 str(folder / "masks")]) == 0
    base = ["eval", "--bank", str(tmp_path / "bank"), "--images", str(folder / "images"), "--masks",
            str(folder / "masks"), "--interactive"]
    capsys.readouterr()
    assert main(base + ["--checkpoint", str(tiny_ckpt)]) == 2
    assert "--interactive needs a proposer that takes clicks" in capsys.readouterr().err
    assert main(base + ["--proposer", "context", "--dask", "local:1"]) == 2
    assert "leave out --dask" in capsys.readouterr().err
