"""The core must stay usable without Qt: importing it (and running the CLI's code paths) loads no Qt binding."""

import subprocess
import sys

CORE = ["napari_matchseg", "napari_matchseg.bank", "napari_matchseg.retrieval", "napari_matchseg.weights",
        "napari_matchseg.proposers.matchseg", "napari_matchseg.propose", "napari_matchseg.training.train",
        "napari_matchseg.training.finetune", "napari_matchseg.proposers.sam2_memory", "napari_matchseg.refiners.sam2",
        "napari_matchseg.active", "napari_matchseg.cli", "napari_matchseg.cli.propose", "napari_matchseg.cli.train",
        "napari_matchseg.pipeline", "napari_matchseg.proposers", "napari_matchseg.refiners", "napari_matchseg.reader"]


def test_core_imports_no_qt():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE) +
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', "
            "'PySide6', 'napari', 'magicgui'))\nprint(bad)\nsys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
