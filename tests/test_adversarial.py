"""The adversarial suite's short form (benchmarks/adversarial.py --quick): crafted banks, bad inputs, concurrent
writers and kills; nothing outside a bank touched, nothing lost, no traceback, no bad input accepted."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import adversarial  # noqa: E402


@pytest.mark.slow
def test_the_quick_adversarial_suite_counts_zero_everywhere(tmp_path, capsys):
    code = adversarial.main(["--quick", "--work", str(tmp_path / "work"), "--json", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    out = capsys.readouterr().out
    assert result["crafted_banks"]["variants"] == len(adversarial.CRAFTED) >= 20
    assert result["bad_inputs"]["inputs"] >= 20 and result["concurrent_writers"]["committed"] == 5 * 4
    assert result["kills"]["kills"] >= 4, result["kills"]
    assert result["totals"] == {"outside_touched": 0, "lost": 0, "corrupt": 0, "tracebacks": 0, "hangs": 0,
                                "accepted_bad_inputs": 0}, out
    assert code == 0


def test_a_crafted_bank_that_escapes_is_counted_when_the_bank_does_not_refuse_it(tmp_path, monkeypatch):
    """The suite itself can fail: with the bank's record check switched off, an escaping path is accepted."""
    from napari_matchseg import bank_format

    monkeypatch.setattr(bank_format, "_record_problem", lambda d: None)
    result = adversarial.crafted_banks(tmp_path, ["image_file ../ escape"], with_segment=False,
                                       log=lambda msg: None)
    assert result["hostile_accepted"] + result["tracebacks"] > 0, result
