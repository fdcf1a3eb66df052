"""Atomic writes: a file on disk is either the old complete version or the new one.

Every write goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed
over the target with :func:`os.replace` (atomic on POSIX and Windows). A process killed half-way
leaves at most a ``*.tmp-*`` file behind, which readers ignore and :func:`remove_stale_temp_files`
cleans up.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TMP_MARKER = ".tmp-"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give; mkstemp alone gives 0600


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None], *,
                 overwrite: bool = True) -> Path:
    """Call ``write(fileobj)`` on a temporary file, then rename it to ``path``.

    With ``overwrite=False`` an existing ``path`` raises :class:`FileExistsError` (checked before
    and, via a hard link where the file system allows it, at the moment of publishing).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + TMP_MARKER, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _FILE_MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile: never clobber
            except FileExistsError:
                raise FileExistsError(f"{path} already exists; refusing to overwrite it") from None
            except OSError:  # file systems without hard links
                if path.exists():
                    raise FileExistsError(f"{path} already exists; refusing to overwrite it") from None
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    return atomic_write(path, lambda f: f.write(data), overwrite=overwrite)


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, overwrite: bool = True) -> Path:
    text = json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=False) + "\n"
    return atomic_write_text(path, text, overwrite=overwrite)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    return atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def remove_stale_temp_files(folder: str | os.PathLike, older_than_s: float | None = None,
                            names: set[str] | None = None) -> list[Path]:
    """Delete ``*.tmp-*`` leftovers of interrupted writes: call while holding the lock every writer of
    ``folder`` takes, or give ``older_than_s`` for a folder written without one (only old files go).
    ``names``: only the leftovers of these files (``<name>.tmp-*``), none of anybody else's."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    with os.scandir(folder) as entries:  # names only: cheap even for 10,000 files
        stale = [Path(e.path) for e in entries if TMP_MARKER in e.name and e.is_file(follow_symlinks=False)
                 and (names is None or e.name.split(TMP_MARKER)[0] in names)]
    now = time.time()
    for p in stale:
        try:
            if older_than_s is not None and now - p.lstat().st_mtime < older_than_s:
                continue
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def same_folder(recorded: str | os.PathLike | None, path: str | os.PathLike) -> bool:
    """Whether a folder recorded in a run or a checkpoint is ``path``, however either was spelt (``bank``,
    ``./bank``, ``/data/bank``): runs and checkpoints made before paths were recorded absolute hold them as typed."""
    if not recorded:
        return False
    try:
        return Path(recorded).resolve() == Path(path).resolve()
    except (OSError, TypeError, ValueError):
        return False


def check_output_folder(out: str | os.PathLike, inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Refuse an output folder that is, contains or is inside an input folder (masks would replace or mix with
    the inputs), or that is inside a reference bank (only the bank's own code writes there)."""
    from .errors import InputError

    target = Path(out).resolve()
    for given in inputs:
        source = Path(given).resolve()
        source = source if source.is_dir() else source.parent
        if target == source or source in target.parents or target in source.parents:
            relation = "is" if target == source else ("is inside" if source in target.parents else "contains")
            raise InputError(f"--out {out} {relation} the input folder {given}: masks would replace or mix with "
                             "the images; nothing was written. Choose a folder apart from the inputs")
    for folder in (target, *target.parents):
        if (folder / "bank.json").is_file():
            raise InputError(f"--out {out} is inside the reference bank {folder}: only the bank's own commands "
                             "write there; nothing was written. Choose a folder outside it")
