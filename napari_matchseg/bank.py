"""The reference bank: labelled image/mask pairs in a folder a user can copy, zip and share.

Layout (everything but ``embeddings/`` and ``features/`` is plain files a person can open)::

    BANK/
      bank.json            format header + one record per reference (human readable; see bank_format)
      images/<id>.png|.tif the reference images, lossless, exactly as added
      masks/<id>.png       binary masks, 0 / 255 (``<id>.r<n>.png`` after the mask was edited)
      embeddings/<model>/  cached retrieval vectors, one array per retriever (see embedding_store)
      features/<model>/    cached per-reference features of a proposer (see feature_cache)
      .bank.lock           taken by every writer (two processes never interleave writes)
      .pending.json        while a write is under way: the files it is creating or about to delete

Every file is written atomically (temporary file + rename) and ``bank.json`` is committed last, so
a process killed mid-write leaves a bank that opens with every completed reference intact. What it
left half-done is in ``.pending.json``: the next process to take the lock (any write, or opening the
bank) deletes those files unless ``bank.json`` refers to them, and removes stale temporary files.

A bank folder is untrusted input: :mod:`~napari_matchseg.bank_format` refuses records whose ids or
files point anywhere but their own ``images/``/``masks/`` files, and no path through a symbolic link
is followed, so nothing in a shared bank can make this code read, write or delete outside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import filelock
import numpy as np

from .bank_embeddings import bank_embeddings
from .bank_files import (JOURNAL, check_no_links, disk_error_message, foreign_content, integrity_problems, journal,
                         tidy)
from .bank_format import (BANK_FILE, FORMAT, FORMAT_VERSION, SOURCES, SUBFOLDERS, Reference, format_bank_json,
                          image_file_for, mask_file_for, parse_bank_data, slug)
from .embedding_store import EmbeddingStore
from .errors import BankError, Cancelled, DuplicateReference, InputError, ReferenceNotFound
from .fsutil import atomic_write_bytes, atomic_write_text
from .image_io import check_image, check_mask, content_hash, encode_image, encode_mask_png, read_image, read_mask

LOCK_TIMEOUT_S = 60.0
__all__ = ["JOURNAL", "Added", "Reference", "ReferenceBank"]

ProgressFn = Callable[[int, int], None]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Added(list):
    """The references :meth:`ReferenceBank.add_many` returns, with how many of them it created itself
    (the rest were already there: added earlier, or by another process meanwhile)."""

    created: int = 0


def _stat_signature(st: os.stat_result) -> tuple:
    return st.st_ino, st.st_size, st.st_mtime_ns


def _signature(f: Path) -> tuple | None:
    """Changes whenever a writer commits (every commit writes a new file and renames it over the old)."""
    try:
        return _stat_signature(f.stat())
    except FileNotFoundError:
        return None


class ReferenceBank:
    """A folder of labelled references; see the module docstring for the layout.

    Reads come from the in-memory copy of ``bank.json`` loaded at open (call :meth:`refresh` to see
    other processes' changes); every write takes the lock, re-reads ``bank.json`` and commits it.
    """

    def __init__(self, path: str | Path, data: dict[str, Any], refs: list[Reference], signature: tuple | None):
        self.path = Path(path)
        self._lock = filelock.FileLock(str(self.path / ".bank.lock"), timeout=LOCK_TIMEOUT_S)
        self._stores: dict[str, EmbeddingStore] = {}
        self._apply(data, refs, signature)

    # ------------------------------------------------------------------ open / create
    @classmethod
    def create(cls, path: str | Path, exist_ok: bool = False) -> ReferenceBank:
        """Create an empty bank at ``path`` (a new or empty folder). A bank that another process creates
        at the same moment is not an error: both get the same bank (and ``exist_ok`` opens an existing one)."""
        path = Path(path)
        if (path / BANK_FILE).exists():
            if exist_ok:
                return cls.open(path)
            raise BankError(f"{path} is already a reference bank; open it instead of creating it")
        if path.exists() and not path.is_dir():
            raise BankError(f"{path} exists and is not a folder")
        if path.is_dir() and foreign_content(path) and not (path / BANK_FILE).exists():
            raise BankError(f"{path} is a non-empty folder that is not a reference bank; "
                            "choose a new or empty folder for the bank")
        try:
            path.mkdir(parents=True, exist_ok=True)
            check_no_links(path)
            with filelock.FileLock(str(path / ".bank.lock"), timeout=LOCK_TIMEOUT_S):
                if (path / BANK_FILE).exists():  # another creator was first: use theirs
                    return cls.open(path)
                if foreign_content(path):
                    raise BankError(f"{path} is a non-empty folder that is not a reference bank; "
                                    "choose a new or empty folder for the bank")
                for sub in SUBFOLDERS[:3]:
                    (path / sub).mkdir(exist_ok=True)
                data = {"format": FORMAT, "version": FORMAT_VERSION, "created": _now()}
                atomic_write_text(path / BANK_FILE, format_bank_json(data, []))
                return cls(path, dict(data, references=[]), [], _signature(path / BANK_FILE))
        except filelock.Timeout:
            raise BankError(f"{path} is locked by another process (waited {LOCK_TIMEOUT_S:.0f} s)") from None
        except OSError as exc:
            raise BankError(disk_error_message(path, "create the bank", exc)) from exc

    @classmethod
    def open(cls, path: str | Path, create: bool = False) -> ReferenceBank:
        """Open an existing bank (or create it when ``create`` and the folder is new/empty)."""
        path = Path(path)
        if not (path / BANK_FILE).exists() and not (path / BANK_FILE).is_symlink():
            if create:
                return cls.create(path, exist_ok=True)
            if not path.exists():
                raise BankError(f"no reference bank at {path}: the folder does not exist. Create one "
                                f"with `matchseg bank create {path}` or ReferenceBank.create()")
            raise BankError(f"{path} is not a napari-matchseg reference bank (no {BANK_FILE} in it). "
                            "Choose the bank folder itself, or create a new bank in an empty folder")
        check_no_links(path)
        bank = cls(path, *cls._read(path))
        bank._tidy_if_free()
        return bank

    @staticmethod
    def _read(path: Path) -> tuple[dict[str, Any], list[Reference], tuple]:
        """The bank file's contents and the signature of the very file they came from (a writer may
        replace ``bank.json`` between a read and a later ``stat``: pairing them would hide its commit)."""
        f = path / BANK_FILE
        try:
            with open(f, "rb") as fh:
                signature = _stat_signature(os.fstat(fh.fileno()))
                data = json.loads(fh.read().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BankError(f"{f} is corrupt ({exc}); it was changed outside napari-matchseg. "
                            "Restore it from a copy of the bank") from exc
        except OSError as exc:
            raise BankError(f"cannot read {f}: {exc.strerror}") from exc
        return data, parse_bank_data(data, str(f)), signature

    def _apply(self, data: dict[str, Any], refs: list[Reference], signature: tuple | None) -> None:
        self._header = {k: v for k, v in data.items() if k != "references"}
        self._refs: dict[str, Reference] = {r.id: r for r in refs}
        self._by_hash = {r.image_sha256: r.id for r in self._refs.values()}
        self._lines: dict[str, tuple[Reference, str]] = {}  # id -> (record, its JSON): re-encode only changes
        self._signature = signature  # of the bank.json that ``data`` came from

    def refresh(self) -> None:
        """Re-read ``bank.json`` if another process committed since we last read or wrote it."""
        if _signature(self.path / BANK_FILE) != self._signature:
            self._apply(*self._read(self.path))

    # ------------------------------------------------------------------ read
    def __len__(self) -> int:
        return len(self._refs)

    def __iter__(self) -> Iterator[Reference]:
        return iter(list(self._refs.values()))

    def __contains__(self, ref_id: object) -> bool:
        return ref_id in self._refs

    def __repr__(self) -> str:
        return f"ReferenceBank({str(self.path)!r}, {len(self)} references)"

    def ids(self) -> list[str]:
        return list(self._refs)

    def get(self, ref_id: str) -> Reference:
        try:
            return self._refs[ref_id]
        except KeyError:
            raise ReferenceNotFound(f"no reference {ref_id!r} in bank {self.path}") from None

    def find_image(self, image) -> str | None:
        """Id of the reference holding exactly this image, if any."""
        return self.find_hash(content_hash(check_image(image)))

    def find_hash(self, image_sha256: str) -> str | None:
        """Id of the reference whose image has this :func:`~napari_matchseg.image_io.content_hash`, if any."""
        return self._by_hash.get(image_sha256)

    def file(self, rel: str) -> Path:
        """The path of one of the bank's own files, refusing a symbolic link (it could lead out of the bank)."""
        p = self.path / rel
        if p.is_symlink() or p.parent.is_symlink():
            raise BankError(f"{p} is a symbolic link; a bank's files must be plain files inside it, so it is "
                            "not followed. Replace the link by the file itself")
        return p

    def _load(self, ref_id: str, read):
        """Read a reference's file; if it vanished, another process changed the bank: look again once."""
        for attempt in range(2):
            ref = self.get(ref_id)
            try:
                return read(ref)
            except InputError:
                if attempt or self.file(ref.image_file).exists() and self.file(ref.mask_file).exists():
                    raise
                self.refresh()
                if ref_id not in self._refs:
                    raise ReferenceNotFound(f"reference {ref_id!r} was removed from bank {self.path} by another "
                                            "process meanwhile") from None

    def load_image(self, ref_id: str) -> np.ndarray:
        return self._load(ref_id, lambda ref: read_image(self.file(ref.image_file)))

    def load_mask(self, ref_id: str) -> np.ndarray:
        return self._load(ref_id, lambda ref: read_mask(self.file(ref.mask_file), ref.shape, allow_full=True))

    # ------------------------------------------------------------------ write
    @contextlib.contextmanager
    def _writing(self, action: str = "write to it"):
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise BankError(f"bank {self.path} is locked by another process (waited {LOCK_TIMEOUT_S:.0f} s); "
                            "close the other program or wait for it to finish") from None
        except OSError as exc:
            raise BankError(disk_error_message(self.path, action, exc)) from exc
        try:
            check_no_links(self.path)
            self.refresh()
            self._tidy()
            yield
        except BaseException as exc:
            self._signature = None  # what is in memory may not have been committed: read the bank again
            with contextlib.suppress(Exception):
                self.refresh()
            if isinstance(exc, OSError):
                raise BankError(disk_error_message(self.path, action, exc)) from exc
            raise
        finally:
            self._lock.release()

    def _tidy(self) -> None:
        """Under the lock: undo what a killed writer left half-done and remove temporaries (see bank_files)."""
        tidy(self.path, {f for r in self._refs.values() for f in (r.image_file, r.mask_file)})

    def _tidy_if_free(self) -> None:
        """At open: tidy up after a killed writer if nobody is writing now and the bank is writable."""
        try:
            self._lock.acquire(timeout=0)
        except (filelock.Timeout, OSError):
            return
        try:
            self._tidy()
        except OSError:
            pass
        finally:
            self._lock.release()

    def _journal(self, written: list[str], obsolete: list[str] = ()):
        return journal(self.path, lambda: _signature(self.path / BANK_FILE), written, obsolete)

    def _commit(self) -> None:
        self._header["updated"] = _now()
        lines = []
        for ref in self._refs.values():
            cached = self._lines.get(ref.id)
            if cached is None or cached[0] is not ref:
                cached = self._lines[ref.id] = (ref, json.dumps(ref.to_json(), ensure_ascii=False))
            lines.append(cached[1])
        atomic_write_text(self.path / BANK_FILE, format_bank_json(self._header, lines))
        self._signature = _signature(self.path / BANK_FILE)  # under the lock: nobody replaced it since
        self._by_hash = {r.image_sha256: r.id for r in self._refs.values()}

    def _unique_id(self, name: str | None) -> str:
        base = slug(name or "ref")
        taken = {i.lower() for i in self._refs}
        rid, n = base, 1
        while rid.lower() in taken or self._files_exist(rid):
            n += 1
            rid = f"{base}-{n}"
        return rid

    def _files_exist(self, rid: str) -> bool:
        return any((self.path / image_file_for(rid, s)).exists() for s in (".png", ".tif")) or \
            (self.path / mask_file_for(rid)).exists()

    def _prepare(self, image, mask, name, source, allow_empty):
        if source not in SOURCES:
            raise InputError(f"source must be one of {SOURCES}, not {source!r}")
        label = name or "image"
        img = check_image(image, name=label)
        m = check_mask(mask, img.shape, name=f"mask of {label}", allow_empty=allow_empty)
        img_bytes, suffix = encode_image(img)
        return img, m, content_hash(img), img_bytes, suffix, encode_mask_png(m)

    def _plan(self, prepared, name, source, on_duplicate) -> tuple[Reference, bytes, bytes] | Reference:
        """The record of a new reference and its files' bytes (nothing written yet), or the existing one."""
        img, m, h, img_bytes, suffix, mask_bytes = prepared
        existing = self._by_hash.get(h)
        if existing is not None:
            if on_duplicate == "skip":
                return self._refs[existing]
            raise DuplicateReference(f"this image is already in the bank as {existing!r}; "
                                     "use update_mask() to change its mask", existing)
        rid = self._unique_id(name)
        now = _now()
        ref = Reference(id=rid, original_name=str(name or ""), image_file=image_file_for(rid, suffix),
                        mask_file=mask_file_for(rid), shape=tuple(int(s) for s in img.shape), dtype=str(img.dtype),
                        image_sha256=h, mask_sha256=content_hash(m), foreground_fraction=round(float(m.mean()), 6),
                        source=source, added=now, updated=now)
        self._refs[rid] = ref
        self._by_hash[h] = rid
        return ref, img_bytes, mask_bytes

    def _insert_batch(self, batch, source, on_duplicate) -> tuple[list[Reference], int]:
        """Plan, write and commit a batch under one lock; returns its references and how many are new."""
        planned = [self._plan(prepared, name, source, on_duplicate) for prepared, name in batch]
        new = [p for p in planned if isinstance(p, tuple)]
        if new:
            with self._journal([f for ref, _, _ in new for f in (ref.image_file, ref.mask_file)]):
                for ref, img_bytes, mask_bytes in new:
                    atomic_write_bytes(self.file(ref.image_file), img_bytes, overwrite=False)
                    atomic_write_bytes(self.file(ref.mask_file), mask_bytes, overwrite=False)
                self._commit()
        return [p[0] if isinstance(p, tuple) else p for p in planned], len(new)

    def add(self, image, mask, *, name: str | None = None, source: str = "manual",
            allow_empty: bool = False, on_duplicate: str = "error") -> Reference:
        """Add one image/mask pair; returns its record once it is safely on disk.

        ``name`` (e.g. the original file name) gives the id; ``on_duplicate`` is ``"error"`` or
        ``"skip"`` (return the existing reference) when the same image is already in the bank.
        """
        prepared = self._prepare(image, mask, name, source, allow_empty)
        with self._writing("add a reference"):
            return self._insert_batch([(prepared, name)], source, on_duplicate)[0][0]

    def add_many(self, items: Iterable[tuple[Any, Any, str | None]], *, source: str = "manual",
                 allow_empty: bool = False, on_duplicate: str = "skip", commit_every: int = 64,
                 total: int | None = None, progress: ProgressFn | None = None,
                 cancel: Callable[[], bool] | None = None) -> Added:
        """Add ``(image, mask, name)`` items (arrays or zero-argument callables that load them),
        committing every ``commit_every`` items so an interruption keeps what was committed.
        """
        out = Added()
        batch: list[tuple] = []

        def flush():
            if not batch:
                return
            with self._writing("add references"):
                refs, created = self._insert_batch(batch, source, on_duplicate)
            out.extend(refs)
            out.created += created
            batch.clear()

        for i, (image, mask, name) in enumerate(items):
            if cancel is not None and cancel():
                flush()
                raise Cancelled(f"cancelled after adding {len(out)} references (kept)")
            image = image() if callable(image) else image
            mask = mask() if callable(mask) else mask
            batch.append((self._prepare(image, mask, name, source, allow_empty), name))
            if len(batch) >= commit_every:
                flush()
            if progress is not None:
                progress(i + 1, total if total is not None else i + 1)
        flush()
        return out

    def add_or_update(self, image, mask, *, name: str | None = None, source: str = "manual") -> tuple[Reference, bool]:
        """Add a pair, or give the reference that already holds this image the new mask; (reference, added)."""
        try:
            return self.add(image, mask, name=name, source=source), True
        except DuplicateReference as exc:
            return self.update_mask(exc.existing_id, mask, source=source), False

    def update_mask(self, ref_id: str, mask, *, source: str | None = None, allow_empty: bool = False) -> Reference:
        """Replace a reference's mask (written under a new file name, then committed). An empty mask is
        refused unless ``allow_empty``: it would silently replace a labelled structure by nothing."""
        if source is not None and source not in SOURCES:
            raise InputError(f"source must be one of {SOURCES}, not {source!r}")
        with self._writing("change a mask"):
            ref = self.get(ref_id)
            m = check_mask(mask, ref.shape, name=f"new mask of {ref_id}", allow_empty=allow_empty)
            rev = 2
            while (self.path / mask_file_for(ref_id, rev)).exists():
                rev += 1
            mask_file = mask_file_for(ref_id, rev)
            data = encode_mask_png(m)
            new = dataclasses.replace(ref, mask_file=mask_file, mask_sha256=content_hash(m),
                                      foreground_fraction=round(float(m.mean()), 6),
                                      source=source or ref.source, updated=_now())
            with self._journal([mask_file], obsolete=[ref.mask_file]):
                atomic_write_bytes(self.file(mask_file), data, overwrite=False)
                self._refs[ref_id] = new
                self._commit()
        return new

    def remove(self, ref_id: str) -> None:
        """Remove a reference (metadata first, then its files)."""
        with self._writing("remove a reference"):
            ref = self.get(ref_id)
            with self._journal([], obsolete=[ref.image_file, ref.mask_file]):
                del self._refs[ref_id]
                self._commit()

    # ------------------------------------------------------------------ integrity
    def check(self, fix: bool = False, verify_hashes: bool = True) -> list[str]:
        """Problems found (missing files, hash mismatches, orphan files); ``fix`` deletes orphans."""
        problems, orphans = integrity_problems(self, verify_hashes)
        if fix and orphans:
            with self._writing("remove orphan files"):
                owned = {f for r in self for f in (r.image_file, r.mask_file)}
                for rel in orphans:
                    if rel not in owned:
                        (self.path / rel).unlink(missing_ok=True)
        return problems

    # ------------------------------------------------------------------ embeddings
    def embedding_store(self, model_id: str) -> EmbeddingStore:
        """The cached vectors of one retriever; one store object per model, reloaded only when it changed."""
        store = self._stores.get(model_id)
        if store is None:
            store = self._stores[model_id] = EmbeddingStore(self.path / "embeddings", model_id, lock=self._lock)
        else:
            store.refresh()
        return store

    def embeddings(self, retriever, *, progress: ProgressFn | None = None,
                   cancel: Callable[[], bool] | None = None, must_cache: bool = False) -> np.ndarray:
        """(len(bank), dim) L2-normalised vectors in ``ids()`` order, embedding only what is new.

        Vectors are cached per retriever ``model_id`` and image content hash, so each image is
        embedded once per retriever whatever it is renamed to, re-added as, or shared with. A bank that
        cannot be written (read-only, full disk) still gives its vectors; they are just not cached (unless
        ``must_cache``: then that is an error).
        References that another process removes meanwhile are skipped (``ids()`` then no longer has them).
        """
        return bank_embeddings(self, retriever, progress, cancel, must_cache)

    def info(self) -> dict[str, Any]:
        """A summary for ``matchseg bank info`` and the plugin's status line."""
        refs = list(self)
        sources = {s: sum(r.source == s for r in refs) for s in SOURCES}
        shapes: dict[str, int] = {}
        for r in refs:
            key = "x".join(map(str, r.shape)) + f" {r.dtype}"
            shapes[key] = shapes.get(key, 0) + 1
        emb = {}
        root = self.path / "embeddings"
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            if d.is_dir() and not d.is_symlink():
                st = EmbeddingStore.from_folder(d)
                if st is not None:
                    hashes = {r.image_sha256 for r in refs}
                    emb[st.model_id] = {"dim": st.dim, "cached": st.count,
                                        "covering_bank": sum(st.has(h) for h in hashes)}
        return {"path": str(self.path), "references": len(refs), "sources": sources,
                "empty_masks": sum(r.foreground_fraction == 0 for r in refs),
                "image_types": dict(sorted(shapes.items(), key=lambda kv: -kv[1])),
                "embeddings": emb, "created": self._header.get("created"),
                "updated": self._header.get("updated")}
