"""Learning from unlabelled images (``matchseg semi``): split by job.

``config`` the settings, ``run_folder`` where a run lives and how it resumes, ``pseudo`` the pseudo-labels of a
round, ``batches`` the FixMatch batches, ``loop`` :func:`run_semi`, the outline of the method. The torch-free
parts load at once (the command line reads the defaults); the rest on first use.
"""

import importlib

from .config import FINAL_NAME, SELECT_SCORES, WARMUP_NAME, SemiConfig
from .run_folder import default_run_dir, kept_result_name, layer_run_dir, read_unlabelled_folder, run_start

_LAZY = {"run_semi": "loop", "semi_batch": "batches", "teacher_target": "batches", "Unlabelled": "batches",
         "agreement": "pseudo", "foreground_confidence": "pseudo", "select_reliable": "pseudo"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SemiConfig", "run_semi", "foreground_confidence", "select_reliable", "read_unlabelled_folder",
           "default_run_dir", "layer_run_dir", "semi_batch", "teacher_target", "Unlabelled", "FINAL_NAME",
           "WARMUP_NAME", "SELECT_SCORES", "kept_result_name", "run_start", "agreement"]
