import argparse
import json

import numpy as np
import pytest

from conftest import dataset_dir, real_ids
from napari_matchseg.cli import main


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_bank_info_retrieve(tmp_path, capsys):
    code, out, _ = run(capsys, "sample", tmp_path / "s", "-n", "5")
    assert code == 0
    bank = tmp_path / "bank"
    code, out, _ = run(capsys, "bank", "add", bank, "--images", tmp_path / "s/images", "--masks", tmp_path / "s/masks")
    assert code == 0 and "added 10 references" in out
    code, out, _ = run(capsys, "bank", "add", bank, "--images", tmp_path / "s/images", "--masks", tmp_path / "s/masks")
    assert "added 0 references, 10 already present" in out
    code, out, _ = run(capsys, "bank", "info", bank, "--json")
    info = json.loads(out)
    assert info["references"] == 10 and info["sources"]["manual"] == 10
    code, out, _ = run(capsys, "retrieve", bank, tmp_path / "s/images/cells_02.png", "-k", "3", "--json",
                       "--exclude", "cells_02")
    res = json.loads(out)
    assert code == 0 and len(res) == 3 and set(res[0]) == {"id", "score"}
    assert all(r["id"].startswith("cells_") and r["id"] != "cells_02" for r in res)
    assert res[0]["score"] >= res[1]["score"] >= res[2]["score"]
    code, out, _ = run(capsys, "bank", "info", bank)
    assert "handcrafted" in out and "10/10 references cached" in out
    code, out, _ = run(capsys, "bank", "list", bank)
    assert len(out.strip().splitlines()) == 10
    code, out, _ = run(capsys, "bank", "remove", bank, "cells_00")
    code, out, _ = run(capsys, "bank", "check", bank)
    assert code == 0 and "0 problem(s)" in out


def test_cli_errors_are_one_actionable_line(tmp_path, capsys):
    code, _, err = run(capsys, "bank", "info", tmp_path / "nothing")
    assert code == 2 and err.startswith("error: no reference bank at") and "Traceback" not in err
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    from napari_matchseg.image_io import write_image, write_mask

    write_image(tmp_path / "imgs/a.png", np.zeros((20, 30), np.uint8))
    write_mask(tmp_path / "masks/a.png", np.ones((20, 31), bool))
    write_image(tmp_path / "imgs/b.png", np.zeros((20, 30), np.uint8) + 5)
    write_mask(tmp_path / "masks/b.png", np.arange(600).reshape(20, 30) % 3 == 0)  # (a full mask is refused now)
    write_image(tmp_path / "imgs/c.png", np.zeros((20, 30), np.uint8) + 9)
    code, out, err = run(capsys, "bank", "add", tmp_path / "bank", "--images", tmp_path / "imgs",
                         "--masks", tmp_path / "masks")
    assert code == 1 and "added 1 references" in out
    assert "a.png" in err and "(20, 31)" in err and "(20, 30)" in err and "c.png" in err
    code, _, err = run(capsys, "retrieve", tmp_path / "bank", tmp_path / "imgs/zzz.png")
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "retrieve", tmp_path / "bank", tmp_path / "imgs/a.png", "-k", "0")
    assert code == 2 and "-k" in err


def test_messages_name_the_first_few_of_a_list():
    from napari_matchseg.errors import name_list

    assert name_list(["a.png"]) == "a.png"  # not "a.png and 0 more"
    assert name_list(list("abcde")) == "a, b, c, d, e"
    assert name_list(list("abcdefg")) == "a, b, c, d, e and 2 more"
    assert name_list(list("abc"), limit=1) == "a and 2 more"


def test_weights_commands(capsys):
    code, out, _ = run(capsys, "weights", "where", "sam2.1_hiera_tiny")
    assert code == 0 and out.strip().endswith("sam2.1_hiera_tiny.pt")
    code, out, _ = run(capsys, "weights", "list", "--json")
    rows = json.loads(out)
    assert {r["name"] for r in rows} >= {"dinov2_vits14", "sam2.1_hiera_large"}
    assert all(r["status"] == ("bundled" if r["name"] == "litemedsam" else "missing") for r in rows)  # empty cache
    code, _, err = run(capsys, "weights", "download", "dinov2_vits14")  # offline in tests
    assert code == 2 and "dinov2_vits14_pretrain.pth" in err and "offline" in err


@pytest.mark.slow
def test_bank_add_and_retrieve_on_real_images(tmp_path, capsys):
    d = dataset_dir("kvasir")
    ids = set(real_ids("kvasir", "train", n=30))
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    for rid in ids:
        (tmp_path / "i" / f"{rid}.png").symlink_to(d / "images" / f"{rid}.png")
        (tmp_path / "m" / f"{rid}.png").symlink_to(d / "masks" / f"{rid}.png")
    code, out, _ = run(capsys, "bank", "add", tmp_path / "b", "--images", tmp_path / "i", "--masks", tmp_path / "m")
    assert code == 0 and "added 30 references" in out
    query = sorted(ids)[4]
    code, out, _ = run(capsys, "retrieve", tmp_path / "b", d / "images" / f"{query}.png", "-k", "5", "--json")
    res = json.loads(out)
    assert res[0]["id"] == query and res[0]["score"] == pytest.approx(1.0, abs=1e-5)


def _commands(parser, path=()):
    """(command path, parser) for every leaf command of the ``matchseg`` parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _commands(child, path + (name,))


def test_every_option_says_what_it_does_and_its_default():
    from napari_matchseg.cli import build_parser
    from napari_matchseg.sam2_model import SAM2_CONFIGS

    commands = list(_commands(build_parser()))
    segment = dict(commands)[("segment",)]  # the SAM 2 sizes offered are the configs the code knows (one table)
    assert next(a for a in segment._actions if "--sam2-model" in a.option_strings).choices == tuple(SAM2_CONFIGS)
    assert len(commands) >= 18
    for path, parser in commands:
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            assert action.help, f"matchseg {' '.join(path)}: {action.dest} has no help text"
        shown = " ".join(parser.format_help().split())  # argparse wraps long lines
        for action in parser._actions:
            if action.option_strings and action.default is not None and not isinstance(action.default, bool) \
                    and action.default is not argparse.SUPPRESS:
                assert f"(default: {action.default})" in shown, f"matchseg {' '.join(path)}: {action.dest}"
