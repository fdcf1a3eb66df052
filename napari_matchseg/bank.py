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

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock
import numpy as np

from .bank_embeddings import bank_embeddings
from .bank_files import JOURNAL, check_no_links, disk_error_message, foreign_content, integrity_problems
from .bank_format import BANK_FILE, FORMAT, FORMAT_VERSION, SOURCES, SUBFOLDERS, Reference, format_bank_json, \
    parse_bank_data
from .bank_writes import LOCK_TIMEOUT_S, Added, BankWrites, ProgressFn, file_signature, now_utc, stat_signature
from .embedding_store import EmbeddingStore
from .errors import BankError, InputError, ReferenceNotFound
from .fsutil import atomic_write_text
from .image_io import check_image, content_hash, read_image, read_labels, read_mask

__all__ = ["JOURNAL", "LOCK_TIMEOUT_S", "Added", "Reference", "ReferenceBank"]


class ReferenceBank(BankWrites):
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
                data = {"format": FORMAT, "version": FORMAT_VERSION, "created": now_utc()}
                atomic_write_text(path / BANK_FILE, format_bank_json(data, []))
                return cls(path, dict(data, references=[]), [], file_signature(path / BANK_FILE))
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
                signature = stat_signature(os.fstat(fh.fileno()))
                data = json.loads(fh.read().decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # bad JSON, a 5,000-digit number, arrays nested too deep
            raise BankError(f"{f} is corrupt ({str(exc)[:120]}); it was changed outside napari-matchseg. "
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
        if file_signature(self.path / BANK_FILE) != self._signature:
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
        """The reference's foreground (bool): every object of it, as retrieval, proposers and training see it."""
        return self._load(ref_id, lambda ref: read_mask(self.file(ref.mask_file), ref.shape, allow_full=True))

    def load_labels(self, ref_id: str) -> np.ndarray:
        """The reference's object ids (uint8 / uint16: 0 background, each object its own value; a reference with
        one object gives 0 / 1)."""
        def read(ref):
            if ref.objects is None:
                return read_mask(self.file(ref.mask_file), ref.shape, allow_full=True).view(np.uint8)
            return read_labels(self.file(ref.mask_file), ref.shape)

        return self._load(ref_id, read)

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
