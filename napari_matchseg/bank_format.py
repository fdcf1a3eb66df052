"""The records of ``bank.json``: what a reference is on disk, and the checks that make a shared bank safe to open.

A bank folder is untrusted input (people zip and share them), so every record is validated when it is read:
an id is a plain name, and a record's files are ``images/<id>.png|.tif`` and ``masks/<id>[.r<n>].png``, nothing
else. A record that names a file elsewhere (``../../x``, an absolute path, another reference's file) makes the
whole bank refused, before anything is read, written or deleted.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from .errors import BankError
from .image_io import MAX_PIXELS

BANK_FILE = "bank.json"
FORMAT = "napari-matchseg-bank"
FORMAT_VERSION = 1
SOURCES = ("manual", "accepted_proposal")
SUBFOLDERS = ("images", "masks", "embeddings", "features")

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REVISION = re.compile(r"\.r[0-9]{1,9}")


def slug(name: str, max_len: int = 64) -> str:
    """A reference id made from a file name: letters, digits, ``.``, ``_`` and ``-`` (always an :data:`ID_PATTERN`)."""
    stem = Path(str(name)).stem if name else ""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:max_len]
    return s or "ref"


def image_file_for(rid: str, suffix: str) -> str:
    return f"images/{rid}{suffix}"


def mask_file_for(rid: str, revision: int | None = None) -> str:
    return f"masks/{rid}{'' if revision is None else f'.r{revision}'}.png"


def _file_belongs(rid: str, rel: str, kind: str) -> bool:
    """Whether ``rel`` is one of the files the bank itself would write for reference ``rid``."""
    if kind == "image":
        return rel in (image_file_for(rid, ".png"), image_file_for(rid, ".tif"))
    prefix, suffix = f"masks/{rid}", ".png"
    if not (rel.startswith(prefix) and rel.endswith(suffix)):
        return False
    middle = rel[len(prefix):len(rel) - len(suffix)]
    return middle == "" or _REVISION.fullmatch(middle) is not None


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
    # a slice of a volume: {"volume": its name, "slice": index, "axis": "z"}; None for a 2D image
    origin: dict[str, Any] | None = dataclasses.field(default=None, hash=False)
    # several objects kept apart: how many object ids the mask file holds (its values are the ids; mask_sha256
    # is then the hash of the ids); None for one object, stored 0 / 255
    objects: int | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        for key in ("origin", "objects"):
            if d[key] is None:
                del d[key]  # records of 2D images with one object stay as they were
        return d

    @classmethod
    def from_json(cls, d: Any, where: str = "bank.json") -> Reference:
        """Parse and validate one record; :class:`BankError` says which record and what is wrong with it."""
        if not isinstance(d, dict):
            raise BankError(f"{where}: a reference record is a {type(d).__name__}, not an object; "
                            f"{_CHANGED_OUTSIDE}")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING} - d.keys()
        label = repr(d.get("id", "?"))
        if missing:
            raise BankError(f"{where}: reference record {label} lacks {sorted(missing)}; {_CHANGED_OUTSIDE}")
        problem = _record_problem(d)
        if problem:
            raise BankError(f"{where}: reference record {label} is refused: {problem}. {_CHANGED_OUTSIDE}")
        return cls(**{k: (tuple(int(s) for s in d[k]) if k == "shape" else d[k]) for k in fields if k in d})


_CHANGED_OUTSIDE = ("the bank was changed outside napari-matchseg, so nothing in it was read, written or deleted. "
                    "Remove that record from bank.json or restore the bank from a trusted copy")


def _record_problem(d: dict[str, Any]) -> str | None:
    """What makes a record unusable or unsafe, or None."""
    rid = d["id"]
    if not isinstance(rid, str) or not ID_PATTERN.fullmatch(rid):
        return "its id must be a plain name of letters, digits, '.', '_' and '-' (no folders)"
    for key in ("image_file", "mask_file"):
        if not isinstance(d[key], str) or not _file_belongs(rid, d[key], key.split("_")[0]):
            return (f"its {key} {d[key]!r} is not a file of this reference (expected "
                    f"{image_file_for(rid, '.png|.tif') if key == 'image_file' else mask_file_for(rid)})")
    shape = d["shape"]
    if (not isinstance(shape, list) or len(shape) not in (2, 3)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        return f"its shape {shape!r} is not a list of 2 or 3 positive integers"
    if shape[0] * shape[1] > MAX_PIXELS or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        return (f"its shape {shape!r} is no image this package reads (at most {MAX_PIXELS / 1e6:.0f} million "
                "pixels, and 1, 3 or 4 channels)")
    for key in ("image_sha256", "mask_sha256"):
        if not isinstance(d[key], str) or not _SHA256.fullmatch(d[key]):
            return f"its {key} is not a sha256 hex digest"
    if d["source"] not in SOURCES:
        return f"its source {d['source']!r} is not one of {', '.join(SOURCES)}"
    frac = d["foreground_fraction"]
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
        return f"its foreground_fraction {frac!r} is not a number between 0 and 1"
    for key in ("original_name", "dtype", "added", "updated"):
        if not isinstance(d[key], str):
            return f"its {key} is not a string"
    objects = d.get("objects")
    if objects is not None and (isinstance(objects, bool) or not isinstance(objects, int)
                                or not 2 <= objects <= 65535):
        return f"its objects {objects!r} is not a whole number from 2 to 65535"
    return origin_problem(d.get("origin"))


ORIGIN_AXES = ("z", "y", "x")


def origin_problem(origin: Any) -> str | None:
    """What is wrong with a reference's ``origin`` (None: a 2D image). The volume's name is only shown, never
    opened: a shared bank cannot point the program at a file through it."""
    if origin is None:
        return None
    if not isinstance(origin, dict) or set(origin) != {"volume", "slice", "axis"}:
        return "its origin must be {\"volume\": name, \"slice\": index, \"axis\": \"z\" | \"y\" | \"x\"}"
    if not isinstance(origin["volume"], str) or not 0 < len(origin["volume"]) <= 255:
        return "its origin's volume is not a name of 1 to 255 characters"
    if isinstance(origin["slice"], bool) or not isinstance(origin["slice"], int) or origin["slice"] < 0:
        return f"its origin's slice {origin['slice']!r} is not a slice index (0 or more)"
    if origin["axis"] not in ORIGIN_AXES:
        return f"its origin's axis {origin['axis']!r} is not one of {', '.join(ORIGIN_AXES)}"
    return None


def parse_bank_data(data: Any, where: str) -> list[Reference]:
    """Validate a decoded ``bank.json`` (header and every record) and return its references in order."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BankError(f"{where} is not a napari-matchseg bank file (format is "
                        f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r})")
    version = data.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise BankError(f"{where} has version {version!r}, which is not a bank format number; "
                        f"{_CHANGED_OUTSIDE}")
    if version > FORMAT_VERSION:
        raise BankError(f"{where} was written by a newer napari-matchseg (bank format {version}, this version "
                        f"reads {FORMAT_VERSION}); upgrade the package")
    if not isinstance(data.get("references"), list):
        raise BankError(f"{where} has no list of references")
    refs = [Reference.from_json(d, where) for d in data["references"]]
    seen: set[str] = set()
    owner: dict[str, str] = {}  # file (case-folded: some file systems ignore case) -> the record that owns it
    for r in refs:
        if r.id.lower() in seen:
            raise BankError(f"{where}: two references share the id {r.id!r}; {_CHANGED_OUTSIDE}")
        seen.add(r.id.lower())
        for f in (r.image_file, r.mask_file):
            other = owner.setdefault(f.lower(), r.id)
            if other != r.id:
                raise BankError(f"{where}: the file {f} belongs to two records ({other!r} and {r.id!r}); removing "
                                f"one would delete the other's file. {_CHANGED_OUTSIDE}")
    return refs


def format_bank_json(header: dict[str, Any], refs: list[str]) -> str:
    """Header fields one per line, then one line per (JSON-encoded) reference: readable and diff-friendly."""
    out = ["{"] + [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in header.items()]
    out.append(' "references": [' + ("" if refs else "]"))
    if refs:
        out.append(",\n".join(f"  {line}" for line in refs))
        out.append(" ]")
    out.append("}")
    return "\n".join(out) + "\n"
