"""Writers killed at random moments (API and CLI, alone or together, with a reader): nothing lost, corrupt or left."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from crash_trials import run_trials  # noqa: E402


@pytest.mark.slow
def test_twenty_kill_trials_lose_nothing_corrupt_nothing_and_leave_nothing(tmp_path):
    result = run_trials(20, tmp_path, seed=1, max_delay_s=0.8, log=lambda msg: None)
    assert result["kills"] >= 15 and result["committed_reported"] > 0, result
    assert (result["lost"], result["corrupt"], result["orphans_left"]) == (0, 0, 0), result
