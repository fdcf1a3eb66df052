"""The reference bank: labelled image/mask pairs in a folder a user can copy, zip and share.

Layout (everything but ``embeddings/`` is plain files a person can open)::

    BANK/
      bank.json            format header + one record per reference (human readable)
      images/<id>.png|.tif the reference images, lossless, exactly as added
      masks/<id>.png       binary masks, 0 / 255
      embeddings/<model>/  cached retrieval vectors, one array per retriever (see embedding_store)
      .bank.lock           taken by every writer (two processes never interleave writes)

Every file is written atomically (temporary file + rename) and ``bank.json`` is committed last, so
a process killed mid-write leaves a bank that opens with every completed reference intact; at worst
a few orphan files remain, which :meth:`ReferenceBank.check` reports and ``fix=True`` removes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import filelock
import numpy as np

from .embedding_store import EmbeddingStore
from .errors import BankError, Cancelled, DuplicateReference, InputError, ReferenceNotFound
from .fsutil import atomic_write, atomic_write_text, remove_stale_temp_files
from .image_io import (check_image, check_mask, content_hash, encode_image, encode_mask_png,
                       read_image, read_mask)

BANK_FILE = "bank.json"
FORMAT = "napari-matchseg-bank"
FORMAT_VERSION = 1
SOURCES = ("manual", "accepted_proposal")
LOCK_TIMEOUT_S = 60.0

ProgressFn = Callable[[int, int], None]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _format_bank_json(header: dict[str, Any], refs: list[str]) -> str:
    """Header fields one per line, then one line per (JSON-encoded) reference: readable and diff-friendly."""
    out = ["{"] + [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in header.items()]
    out.append(' "references": [' + ("" if refs else "]"))
    if refs:
        out.append(",\n".join(f"  {line}" for line in refs))
        out.append(" ]")
    out.append("}")
    return "\n".join(out) + "\n"


def _slug(name: str, max_len: int = 64) -> str:
    stem = Path(str(name)).stem if name else ""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:max_len]
    return s or "ref"


@dataclasses.dataclass(frozen=True)
class Reference:
    """Metadata of one reference; pixels are loaded on demand with the bank's ``load_*``."""

    id: str
    original_name: str
    image_file: str
    mask_file: str
    shape: tuple[int, ...]
    dtype: str
    image_sha256: str
    mask_sha256: str
    foreground_fraction: float
    source: str
    added: str
    updated: str

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Reference:
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = fields - d.keys()
        if missing:
            raise BankError(f"reference record {d.get('id', '?')!r} lacks {sorted(missing)}")
        return cls(**{k: (tuple(d[k]) if k == "shape" else d[k]) for k in fields})


class _LazyImages(Sequence):
    """Images of a bank read from disk only when a batch needs them."""

    def __init__(self, bank: ReferenceBank, ids: list[str]):
        self._bank, self._ids = bank, ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i):
        return self._bank.load_image(self._ids[i])


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

    def __init__(self, path: str | Path, data: dict[str, Any], signature: tuple | None):
        self.path = Path(path)
        self._lock = filelock.FileLock(str(self.path / ".bank.lock"), timeout=LOCK_TIMEOUT_S)
        self._stores: dict[str, EmbeddingStore] = {}
        self._apply(data, signature)

    # ------------------------------------------------------------------ open / create
    @classmethod
    def create(cls, path: str | Path) -> ReferenceBank:
        """Create an empty bank at ``path`` (a new or empty folder)."""
        path = Path(path)
        if (path / BANK_FILE).exists():
            raise BankError(f"{path} is already a reference bank; open it instead of creating it")
        if path.exists() and not path.is_dir():
            raise BankError(f"{path} exists and is not a folder")
        if path.is_dir() and any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise BankError(f"{path} is a non-empty folder that is not a reference bank; "
                            "choose a new or empty folder for the bank")
        for sub in ("images", "masks", "embeddings"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "version": FORMAT_VERSION, "created": _now()}
        with filelock.FileLock(str(path / ".bank.lock"), timeout=LOCK_TIMEOUT_S):
            if (path / BANK_FILE).exists():  # lost a race with another creator: use theirs
                return cls.open(path)
            atomic_write_text(path / BANK_FILE, _format_bank_json(data, []))
            return cls(path, dict(data, references=[]), _signature(path / BANK_FILE))

    @classmethod
    def open(cls, path: str | Path, create: bool = False) -> ReferenceBank:
        """Open an existing bank (or create it when ``create`` and the folder is new/empty)."""
        path = Path(path)
        if not (path / BANK_FILE).exists():
            if create:
                return cls.create(path)
            if not path.exists():
                raise BankError(f"no reference bank at {path}: the folder does not exist. Create one "
                                f"with `matchseg bank create {path}` or ReferenceBank.create()")
            raise BankError(f"{path} is not a napari-matchseg reference bank (no {BANK_FILE} in it). "
                            "Choose the bank folder itself, or create a new bank in an empty folder")
        return cls(path, *cls._read(path))

    @staticmethod
    def _read(path: Path) -> tuple[dict[str, Any], tuple]:
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
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BankError(f"{f} is not a napari-matchseg bank file (format is "
                            f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r})")
        if int(data.get("version", 0)) > FORMAT_VERSION:
            raise BankError(f"{path} was written by a newer napari-matchseg (bank format "
                            f"{data['version']}, this version reads {FORMAT_VERSION}); upgrade the package")
        if not isinstance(data.get("references"), list):
            raise BankError(f"{f} has no list of references")
        return data, signature

    def _apply(self, data: dict[str, Any], signature: tuple | None) -> None:
        self._header = {k: v for k, v in data.items() if k != "references"}
        self._refs: dict[str, Reference] = {}
        for d in data["references"]:
            ref = Reference.from_json(d)
            self._refs[ref.id] = ref
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

    def load_image(self, ref_id: str) -> np.ndarray:
        return read_image(self.path / self.get(ref_id).image_file)

    def load_mask(self, ref_id: str) -> np.ndarray:
        ref = self.get(ref_id)
        return read_mask(self.path / ref.mask_file, ref.shape)

    # ------------------------------------------------------------------ write
    @contextlib.contextmanager
    def _writing(self):
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise BankError(f"bank {self.path} is locked by another process (waited {LOCK_TIMEOUT_S:.0f} s); "
                            "close the other program or wait for it to finish") from None
        try:
            self.refresh()
            for sub in (self.path, self.path / "images", self.path / "masks"):
                remove_stale_temp_files(sub)
            yield
        finally:
            self._lock.release()

    def _commit(self) -> None:
        self._header["updated"] = _now()
        lines = []
        for ref in self._refs.values():
            cached = self._lines.get(ref.id)
            if cached is None or cached[0] is not ref:
                cached = self._lines[ref.id] = (ref, json.dumps(ref.to_json(), ensure_ascii=False))
            lines.append(cached[1])
        atomic_write_text(self.path / BANK_FILE, _format_bank_json(self._header, lines))
        self._signature = _signature(self.path / BANK_FILE)  # under the lock: nobody replaced it since
        self._by_hash = {r.image_sha256: r.id for r in self._refs.values()}

    def _unique_id(self, name: str | None) -> str:
        base = _slug(name or "ref")
        taken = {i.lower() for i in self._refs}
        rid, n = base, 1
        while rid.lower() in taken or self._files_exist(rid):
            n += 1
            rid = f"{base}-{n}"
        return rid

    def _files_exist(self, rid: str) -> bool:
        return any((self.path / "images" / f"{rid}{s}").exists() for s in (".png", ".tif")) or \
            (self.path / "masks" / f"{rid}.png").exists()

    def _prepare(self, image, mask, name, source, allow_empty):
        if source not in SOURCES:
            raise InputError(f"source must be one of {SOURCES}, not {source!r}")
        label = name or "image"
        img = check_image(image, name=label)
        m = check_mask(mask, img.shape, name=f"mask of {label}", allow_empty=allow_empty)
        img_bytes, suffix = encode_image(img)
        return img, m, content_hash(img), img_bytes, suffix, encode_mask_png(m)

    def _insert(self, prepared, name, source, on_duplicate) -> Reference:
        img, m, h, img_bytes, suffix, mask_bytes = prepared
        existing = self._by_hash.get(h)
        if existing is not None:
            if on_duplicate == "skip":
                return self._refs[existing]
            raise DuplicateReference(f"this image is already in the bank as {existing!r}; "
                                     "use update_mask() to change its mask", existing)
        rid = self._unique_id(name)
        image_file, mask_file = f"images/{rid}{suffix}", f"masks/{rid}.png"
        atomic_write(self.path / image_file, lambda f: f.write(img_bytes), overwrite=False)
        atomic_write(self.path / mask_file, lambda f: f.write(mask_bytes), overwrite=False)
        now = _now()
        ref = Reference(id=rid, original_name=str(name or ""), image_file=image_file, mask_file=mask_file,
                        shape=tuple(int(s) for s in img.shape), dtype=str(img.dtype), image_sha256=h,
                        mask_sha256=content_hash(m), foreground_fraction=round(float(m.mean()), 6),
                        source=source, added=now, updated=now)
        self._refs[rid] = ref
        self._by_hash[h] = rid
        return ref

    def add(self, image, mask, *, name: str | None = None, source: str = "manual",
            allow_empty: bool = False, on_duplicate: str = "error") -> Reference:
        """Add one image/mask pair; returns its record once it is safely on disk.

        ``name`` (e.g. the original file name) gives the id; ``on_duplicate`` is ``"error"`` or
        ``"skip"`` (return the existing reference) when the same image is already in the bank.
        """
        prepared = self._prepare(image, mask, name, source, allow_empty)
        with self._writing():
            ref = self._insert(prepared, name, source, on_duplicate)
            self._commit()
        return ref

    def add_many(self, items: Iterable[tuple[Any, Any, str | None]], *, source: str = "manual",
                 allow_empty: bool = False, on_duplicate: str = "skip", commit_every: int = 64,
                 total: int | None = None, progress: ProgressFn | None = None,
                 cancel: Callable[[], bool] | None = None) -> list[Reference]:
        """Add ``(image, mask, name)`` items (arrays or zero-argument callables that load them),
        committing every ``commit_every`` items so an interruption keeps what was committed.
        """
        out: list[Reference] = []
        batch: list[tuple] = []

        def flush():
            if not batch:
                return
            with self._writing():
                for prepared, name in batch:
                    out.append(self._insert(prepared, name, source, on_duplicate))
                self._commit()
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

    def update_mask(self, ref_id: str, mask, *, source: str | None = None) -> Reference:
        """Replace a reference's mask (written under a new file name, then committed)."""
        with self._writing():
            ref = self.get(ref_id)
            m = check_mask(mask, ref.shape, name=f"new mask of {ref_id}")
            rev = 2
            while (self.path / "masks" / f"{ref_id}.r{rev}.png").exists():
                rev += 1
            mask_file = f"masks/{ref_id}.r{rev}.png"
            data = encode_mask_png(m)
            atomic_write(self.path / mask_file, lambda f: f.write(data), overwrite=False)
            new = dataclasses.replace(ref, mask_file=mask_file, mask_sha256=content_hash(m),
                                      foreground_fraction=round(float(m.mean()), 6),
                                      source=source or ref.source, updated=_now())
            if new.source not in SOURCES:
                raise InputError(f"source must be one of {SOURCES}, not {new.source!r}")
            self._refs[ref_id] = new
            self._commit()
            (self.path / ref.mask_file).unlink(missing_ok=True)
        return new

    def remove(self, ref_id: str) -> None:
        """Remove a reference (metadata first, then its files)."""
        with self._writing():
            ref = self.get(ref_id)
            del self._refs[ref_id]
            self._commit()
            for f in (ref.image_file, ref.mask_file):
                (self.path / f).unlink(missing_ok=True)

    # ------------------------------------------------------------------ integrity
    def check(self, fix: bool = False, verify_hashes: bool = True) -> list[str]:
        """Problems found (missing files, hash mismatches, orphan files); ``fix`` deletes orphans."""
        problems: list[str] = []
        referenced = set()
        for ref in self:
            for f, sha, kind in ((ref.image_file, ref.image_sha256, "image"),
                                 (ref.mask_file, ref.mask_sha256, "mask")):
                referenced.add(f)
                p = self.path / f
                if not p.exists():
                    problems.append(f"{ref.id}: {kind} file {f} is missing")
                    continue
                if verify_hashes:
                    try:
                        arr = self.load_image(ref.id) if kind == "image" else self.load_mask(ref.id)
                    except InputError as exc:
                        problems.append(f"{ref.id}: {exc}")
                        continue
                    if content_hash(arr) != sha:
                        problems.append(f"{ref.id}: {kind} file {f} does not match its recorded hash")
        for sub in ("images", "masks"):
            folder = self.path / sub
            for p in sorted(folder.iterdir()) if folder.is_dir() else []:
                rel = f"{sub}/{p.name}"
                if rel not in referenced:
                    problems.append(f"orphan file {rel} (left by an interrupted write)")
                    if fix:
                        with self._writing():
                            if rel not in {r.image_file for r in self} | {r.mask_file for r in self}:
                                p.unlink(missing_ok=True)
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
                   cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """(len(bank), dim) L2-normalised vectors in ``ids()`` order, embedding only what is new.

        Vectors are cached per retriever ``model_id`` and image content hash, so each image is
        embedded once per retriever whatever it is renamed to, re-added as, or shared with.
        """
        store = self.embedding_store(retriever.model_id)
        refs = list(self)
        missing = [r for r in refs if not store.has(r.image_sha256)]
        if missing:
            vecs = retriever.embed(_LazyImages(self, [r.id for r in missing]), progress=progress,
                                   cancel=cancel)
            store.add([r.image_sha256 for r in missing], vecs)
        return store.get([r.image_sha256 for r in refs])

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
            if d.is_dir():
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
