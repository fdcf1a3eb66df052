"""A run folder: where a run lives, which settings it was started with, and whether a call resumes or continues it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...bank import ReferenceBank
from ...errors import InputError, name_list
from ...fsutil import atomic_write_json, same_folder
from ...image_io import list_images, read_image
from .config import FINAL_NAME


def read_unlabelled_folder(folder: str | Path) -> list[tuple[str, np.ndarray, str]]:
    """(name, image, source path) for every image of a folder; a file that cannot be read is an error."""
    files = list_images(folder)
    if not files:
        raise InputError(f"no images in {folder}")
    names = [p.stem for p in files]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"{folder} holds several images named {name_list(dup)} with different suffixes; rename them")
    return [(p.stem, read_image(p), str(p)) for p in files]


def default_run_dir(bank: ReferenceBank) -> Path:
    return bank.path.with_name(bank.path.name + ".semi")


def layer_run_dir(bank: ReferenceBank, source: str) -> Path:
    """The run folder of one source of unlabelled images (a napari layer's name) beside the bank."""
    return default_run_dir(bank) / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in source)


def run_start(checkpoint: str | Path | None, bank: ReferenceBank) -> str | Path | None:
    """The checkpoint a run on ``bank`` started from when ``checkpoint`` is that run's result, else
    ``checkpoint``: learning again from such a result (the plugin's checkpoint in use) continues that run
    instead of stacking a new one on it. A result learnt on another bank stays the start."""
    if checkpoint is None or Path(checkpoint).name != FINAL_NAME:
        return checkpoint
    try:
        config = json.loads((Path(checkpoint).parent / "config.json").read_text())
        base, run_bank = config["base"], config["bank"]
    except (OSError, ValueError, KeyError, TypeError):
        return checkpoint
    if not same_folder(run_bank, bank.path):
        return checkpoint
    return None if base == "default" else base


def digest(items: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def _changed(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Names of the settings that differ, nested ones as ``semi.teacher`` (so the message says which)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


def _more_rounds(started: dict, settings: dict) -> bool:
    """Whether ``settings`` only asks for more rounds than the run in a folder was started with: rounds are
    seeded and scheduled by their index alone, so such a run goes on from its last round (as if started so)."""
    return _changed(started, settings) == ["semi.rounds"] and settings["semi"]["rounds"] > started["semi"]["rounds"]


def kept_result_name(rounds: int) -> str:
    """Where a finished run's result goes when more rounds are added to it (nothing finished is overwritten)."""
    return FINAL_NAME.replace(".safetensors", f".{rounds}-rounds.safetensors")


def open_run(run: Path, settings: dict, new_run_if_different: bool, log) -> Path:
    """The run folder to use: a new one, or one started with these settings (resumed or complete), or with
    fewer rounds (continued)."""
    def started_in(folder: Path) -> dict | None:
        file = folder / "config.json"
        if not file.exists():
            return None
        return json.loads(file.read_text())

    if new_run_if_different:
        n, first = 1, run
        while (old := started_in(run)) is not None and old != settings and not _more_rounds(old, settings):
            n += 1
            run = first.with_name(f"{first.name}-{n}")
    started = started_in(run)
    if started is None:
        atomic_write_json(run / "config.json", settings, overwrite=False)
        return run
    if _more_rounds(started, settings):
        before, after = started["semi"]["rounds"], settings["semi"]["rounds"]
        if (run / FINAL_NAME).exists():
            kept = run / kept_result_name(before)
            if kept.exists():
                raise InputError(f"{kept} is in the way of keeping this run's {before}-round result; move it away")
            (run / FINAL_NAME).rename(kept)
            log(f"the {before}-round result is kept as {kept}")
        atomic_write_json(run / "config.json", settings)
        log(f"adding rounds {before + 1}-{after} to the run in {run}")
        return run
    if started != settings:
        changed = _changed(started, settings)
        hint = ""
        fewer = settings["semi"]["rounds"]
        if changed == ["semi.rounds"] and (run / f"round-{fewer - 1}.safetensors").exists():
            hint = f"; its result after {fewer} rounds is round-{fewer - 1}.safetensors there"
        raise InputError(f"{run} holds a run started with other settings ({', '.join(changed)} differ{hint}); "
                         "choose another run folder, or delete this one to start over")
    log(f"{run / FINAL_NAME} is already complete" if (run / FINAL_NAME).exists() else f"resuming the run in {run}")
    return run


def tuned_on(meta: dict, bank: ReferenceBank) -> bool:
    """Whether a checkpoint (its metadata) came out of ``finetune`` on this bank (same folder, same number of
    references): then it already is what the warm-up would make."""
    return same_folder(meta.get("finetuned_on"), bank.path) and meta.get("references") == len(bank)
