"""The bank's writes: every one takes the lock, re-reads ``bank.json``, journals its files and commits.

:class:`~napari_matchseg.bank.ReferenceBank` inherits these; they rely on its ``path``, lock and records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import filelock
import numpy as np

from .bank_files import check_no_links, disk_error_message, journal, tidy
from .bank_format import (SOURCES, BANK_FILE, Reference, format_bank_json, image_file_for, mask_file_for,
                          origin_problem, slug)
from .errors import BankError, Cancelled, DuplicateReference, InputError
from .fsutil import atomic_write_bytes, atomic_write_text
from .image_io import (check_image, check_mask, content_hash, encode_image, encode_labels_png, encode_mask_png,
                       object_labels)

LOCK_TIMEOUT_S = 60.0
ProgressFn = Callable[[int, int], None]


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Added(list):
    """The references :meth:`ReferenceBank.add_many` returns, with how many of them it created itself
    (the rest were already there: added earlier, or by another process meanwhile)."""

    created: int = 0


def stat_signature(st: os.stat_result) -> tuple:
    return st.st_ino, st.st_size, st.st_mtime_ns


def file_signature(f: Path) -> tuple | None:
    """Changes whenever a writer commits (every commit writes a new file and renames it over the old)."""
    try:
        return stat_signature(f.stat())
    except FileNotFoundError:
        return None


def _mask_file(mask, foreground, name: str) -> tuple[bytes, str, int | None]:
    """(the mask file's bytes, the hash recorded for it, its number of objects): several label values are kept
    as object ids (an 8- or 16-bit PNG of the values), one object is a 0 / 255 PNG as always."""
    labels = object_labels(mask, name)
    if labels is None:
        return encode_mask_png(foreground), content_hash(foreground), None
    return encode_labels_png(labels), content_hash(labels), int(len(np.unique(labels)) - 1)


class BankWrites:
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
        return journal(self.path, lambda: file_signature(self.path / BANK_FILE), written, obsolete)

    def _commit(self) -> None:
        self._header["updated"] = now_utc()
        lines = []
        for ref in self._refs.values():
            cached = self._lines.get(ref.id)
            if cached is None or cached[0] is not ref:
                cached = self._lines[ref.id] = (ref, json.dumps(ref.to_json(), ensure_ascii=False))
            lines.append(cached[1])
        atomic_write_text(self.path / BANK_FILE, format_bank_json(self._header, lines))
        self._signature = file_signature(self.path / BANK_FILE)  # under the lock: nobody replaced it since
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

    def _prepare(self, image, mask, name, source, allow_empty, origin=None):
        if source not in SOURCES:
            raise InputError(f"source must be one of {SOURCES}, not {source!r}")
        problem = origin_problem(origin)
        if problem:
            raise InputError(f"origin of {name or 'the reference'}: {problem.replace('its origin', 'the origin')}")
        label = name or "image"
        img = check_image(image, name=label)
        m = check_mask(mask, img.shape, name=f"mask of {label}", allow_empty=allow_empty)
        img_bytes, suffix = encode_image(img)
        return img, m, content_hash(img), img_bytes, suffix, *_mask_file(mask, m, label), origin

    def _plan(self, prepared, name, source, on_duplicate) -> tuple[Reference, bytes, bytes] | Reference:
        """The record of a new reference and its files' bytes (nothing written yet), or the existing one."""
        img, m, h, img_bytes, suffix, mask_bytes, mask_sha, objects, origin = prepared
        existing = self._by_hash.get(h)
        if existing is not None:
            if on_duplicate == "skip":
                return self._refs[existing]
            raise DuplicateReference(f"this image is already in the bank as {existing!r}; "
                                     "use update_mask() to change its mask", existing)
        rid = self._unique_id(name)
        now = now_utc()
        ref = Reference(id=rid, original_name=str(name or ""), image_file=image_file_for(rid, suffix),
                        mask_file=mask_file_for(rid), shape=tuple(int(s) for s in img.shape), dtype=str(img.dtype),
                        image_sha256=h, mask_sha256=mask_sha, foreground_fraction=round(float(m.mean()), 6),
                        source=source, added=now, updated=now, origin=dict(origin) if origin else None,
                        objects=objects)
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
            allow_empty: bool = False, on_duplicate: str = "error", origin: dict | None = None) -> Reference:
        """Add one image/mask pair; returns its record once it is safely on disk.

        ``name`` (e.g. the original file name) gives the id; ``on_duplicate`` is ``"error"`` or
        ``"skip"`` (return the existing reference) when the same image is already in the bank. ``origin``: for a
        slice of a volume, ``{"volume": its name, "slice": index, "axis": "z"}`` (kept in the record).
        """
        prepared = self._prepare(image, mask, name, source, allow_empty, origin)
        with self._writing("add a reference"):
            return self._insert_batch([(prepared, name)], source, on_duplicate)[0][0]

    def add_many(self, items: Iterable[tuple[Any, Any, str | None]], *, source: str = "manual",
                 allow_empty: bool = False, on_duplicate: str = "skip", commit_every: int = 64,
                 total: int | None = None, progress: ProgressFn | None = None,
                 cancel: Callable[[], bool] | None = None) -> Added:
        """Add ``(image, mask, name)`` items (arrays or zero-argument callables that load them; a fourth element,
        the slice's ``origin``, is optional), committing every ``commit_every`` items so an interruption keeps
        what was committed.
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

        for i, (image, mask, name, *origin) in enumerate(items):
            if cancel is not None and cancel():
                flush()
                raise Cancelled(f"cancelled after adding {len(out)} references (kept)")
            image = image() if callable(image) else image
            mask = mask() if callable(mask) else mask
            batch.append((self._prepare(image, mask, name, source, allow_empty, *origin[:1]), name))
            if len(batch) >= commit_every:
                flush()
            if progress is not None:
                progress(i + 1, total if total is not None else i + 1)
        flush()
        return out

    def add_or_update(self, image, mask, *, name: str | None = None, source: str = "manual",
                      origin: dict | None = None) -> tuple[Reference, bool]:
        """Add a pair, or give the reference that already holds this image the new mask; (reference, added)."""
        try:
            return self.add(image, mask, name=name, source=source, origin=origin), True
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
            data, mask_sha, objects = _mask_file(mask, m, f"new mask of {ref_id}")
            new = dataclasses.replace(ref, mask_file=mask_file, mask_sha256=mask_sha, objects=objects,
                                      foreground_fraction=round(float(m.mean()), 6),
                                      source=source or ref.source, updated=now_utc())
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
