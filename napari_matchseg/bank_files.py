"""The bank's files on disk: no link followed out of it, a journal that undoes a killed writer's work, integrity checks.

Every function here runs under the bank's lock when it changes anything (the caller takes it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from .bank_format import BANK_FILE, SUBFOLDERS
from .errors import BankError, InputError
from .fsutil import TMP_MARKER, atomic_write_json, remove_stale_temp_files
from .image_io import content_hash

JOURNAL = ".pending.json"
STALE_FEATURE_TEMP_S = 600.0  # feature files are written without the lock: only old temporaries are leftovers
_MANAGED = re.compile(r"(images|masks)/[A-Za-z0-9][A-Za-z0-9._-]*")


def disk_error_message(path: Path, action: str, exc: OSError) -> str:
    """One actionable line for a write that the file system refused."""
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"bank {path} is read-only ({exc.strerror}), so napari-matchseg cannot {action}. Copy the bank "
                "to a folder you can write to, or ask its owner for write access; nothing was changed")
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return (f"the disk holding bank {path} is full ({exc.strerror}): could not {action}. What was already "
                "committed is kept and nothing half-written was left; free some space and try again")
    return f"could not {action} in bank {path}: {exc}"


def check_no_links(path: Path) -> None:
    """Refuse a bank whose own files or folders are symbolic links: following one could read, write or delete
    outside the bank (the lock file is opened for writing, the subfolders receive files)."""
    for name in (BANK_FILE, ".bank.lock", JOURNAL, *SUBFOLDERS):
        p = path / name
        if p.is_symlink():
            raise BankError(f"{p} is a symbolic link; a bank's files and folders must be inside it, so the bank "
                            "is refused. Replace the link by a real file or folder (or copy the bank with "
                            "links resolved)")
        if name in SUBFOLDERS and p.exists() and not p.is_dir():
            raise BankError(f"{p} should be a folder of the bank but is a file; the bank was changed outside "
                            "napari-matchseg. Move that file away")


def foreign_content(path: Path) -> bool:
    """Whether a folder holds anything but hidden files and what a creator killed before it wrote ``bank.json``
    (or one creating the bank right now) leaves: empty subfolders, a temporary ``bank.json``."""
    def ours(p: Path) -> bool:
        return (p.name.startswith(".") or p.name.startswith(BANK_FILE + TMP_MARKER)
                or p.name in SUBFOLDERS and p.is_dir() and not p.is_symlink() and not any(p.iterdir()))
    return not all(ours(p) for p in path.iterdir())


def tidy(path: Path, referenced: set[str]) -> None:
    """Undo what a killed writer left half-done (the files its journal names that no record owns) and
    remove temporary files. ``referenced``: every file the committed records own."""
    for sub in (path, path / "images", path / "masks"):
        remove_stale_temp_files(sub)
    for kind, age in (("embeddings", None), ("features", STALE_FEATURE_TEMP_S)):
        root = path / kind
        if root.is_dir() and not root.is_symlink():
            for d in root.iterdir():
                if d.is_dir() and not d.is_symlink():
                    remove_stale_temp_files(d, older_than_s=age)
    journal = path / JOURNAL
    if not (journal.exists() or journal.is_symlink()):
        return
    try:
        pending = json.loads(journal.read_text()) if not journal.is_symlink() else {}
    except (OSError, ValueError):
        pending = {}
    names = (pending.get("written", []) + pending.get("obsolete", [])) if isinstance(pending, dict) else []
    for rel in names if isinstance(names, list) else []:
        if isinstance(rel, str) and _MANAGED.fullmatch(rel) and rel not in referenced:
            (path / rel).unlink(missing_ok=True)  # a plain name in a checked folder: never outside
    journal.unlink()


@contextlib.contextmanager
def journal(path: Path, signature, written: list[str], obsolete: Iterable[str] = ()) -> Iterator[None]:
    """Record the files a write creates or will delete, so a kill at any point can be undone by :func:`tidy`.
    On an error before the commit (``signature()`` of ``bank.json`` unchanged) the written files go at once."""
    obsolete = list(obsolete)
    atomic_write_json(path / JOURNAL, {"written": written, "obsolete": obsolete})
    before = signature()
    try:
        yield
    except BaseException:
        if signature() == before:
            for rel in written:
                with contextlib.suppress(OSError):
                    (path / rel).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (path / JOURNAL).unlink()
        raise
    for rel in obsolete:  # a plain name in a checked folder; unlinking a symbolic link removes only the link
        (path / rel).unlink(missing_ok=True)
    (path / JOURNAL).unlink()


def integrity_problems(bank, verify_hashes: bool = True) -> tuple[list[str], list[str]]:
    """(problems, orphan files): missing or linked files, hash mismatches, and files no record owns."""
    problems: list[str] = []
    referenced = set()
    for ref in bank:
        for f, sha, kind in ((ref.image_file, ref.image_sha256, "image"), (ref.mask_file, ref.mask_sha256, "mask")):
            referenced.add(f)
            p = bank.path / f
            if p.is_symlink():
                problems.append(f"{ref.id}: {kind} file {f} is a symbolic link (not followed)")
                continue
            if not p.exists():
                problems.append(f"{ref.id}: {kind} file {f} is missing")
                continue
            if not p.is_file():
                problems.append(f"{ref.id}: {kind} file {f} is not a regular file (a FIFO, device or folder)")
                continue
            if verify_hashes:
                try:
                    arr = bank.load_image(ref.id) if kind == "image" else \
                        bank.load_labels(ref.id) if ref.objects else bank.load_mask(ref.id)
                except InputError as exc:
                    problems.append(f"{ref.id}: {exc}")
                    continue
                if content_hash(arr) != sha:
                    problems.append(f"{ref.id}: {kind} file {f} does not match its recorded hash")
    orphans = []
    for sub in ("images", "masks"):
        folder = bank.path / sub
        for p in sorted(folder.iterdir()) if folder.is_dir() else []:
            rel = f"{sub}/{p.name}"
            if rel not in referenced:
                problems.append(f"orphan file {rel} (left by an interrupted write)")
                orphans.append(rel)
    return problems, orphans
