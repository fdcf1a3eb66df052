"""The plugin under PyQt6 as well as PyQt5 (napari supports both; the default suite runs on PyQt5)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def test_the_gui_tests_pass_under_pyqt6():
    pytest.importorskip("PyQt6.QtWidgets", reason="PyQt6 is in the testing extra: pip install -e .[testing]")
    env = {**os.environ, "QT_API": "pyqt6", "MATCHSEG_EXPECT_QT": "PyQt6"}
    tests = ["tests/test_widget_series.py", "tests/test_widget.py::test_export_formats",
             "tests/test_widget.py::test_series_propose_all_and_suggest_next",
             "tests/test_napari_plugin.py::test_sample_data_opens_in_napari"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-o", "qt_api=pyqt6", "-p", "no:cacheprovider",
                          *tests], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout.splitlines()[-1]
