"""Exported masks and their ``annotations.csv``: a later export of the same images updates the earlier one.

An export writes one mask file per labelled image and ``annotations.csv`` (one row per file, with the sha256 of
the bytes written). Exporting again into that folder replaces only files the log says the plugin wrote and that
nobody changed since (their bytes still have the logged sha256); a mask whose content is the same is left as it
is; rows of other files (another series exported there earlier) are kept. Anything else in the way - a file the
log does not list, one changed after the export, a ``annotations.csv`` that is not an export log - stops the
export before it writes anything.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

from .errors import InputError, name_list
from .weights import sha256_file as file_sha256

LOG_NAME = "annotations.csv"
COLUMNS = ["file", "slice", "source", "reference", "objects", "edited_before_accept", "clicks", "boxes", "seconds",
           "sha256"]


def read_log(folder: Path) -> dict[str, dict] | None:
    """The rows of an earlier export in ``folder`` by file name ({} when there is none; None when
    ``annotations.csv`` exists but is not an export log)."""
    log = Path(folder) / LOG_NAME
    if not log.exists():
        return {}
    try:
        rows = list(csv.DictReader(io.StringIO(log.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not rows and not log.read_text(encoding="utf-8").startswith("file,"):
        return None
    if rows and not {"file", "source", "reference"} <= set(rows[0]):
        return None
    return {r["file"]: r for r in rows if r.get("file") and "/" not in r["file"] and "\\" not in r["file"]}


@dataclasses.dataclass
class ExportPlan:
    folder: Path
    earlier: dict[str, dict]  # the log's rows from before
    replace: set[str]  # files of the earlier export that this one writes again

    def csv_text(self, rows: list[dict]) -> str:
        """The new log: the earlier rows of files not exported now, then this export's rows."""
        now = {r["file"] for r in rows}
        buf = io.StringIO()
        out = csv.DictWriter(buf, COLUMNS, extrasaction="ignore")
        out.writeheader()
        for name, r in self.earlier.items():
            if name not in now:
                out.writerow({c: r.get(c, "") for c in COLUMNS})
        for r in rows:
            out.writerow(r)
        return buf.getvalue()


def plan_export(folder: str | Path, names: list[str]) -> ExportPlan:
    """Check that writing ``names`` (file names) into ``folder`` overwrites nothing but this plugin's own unchanged
    earlier export; raise :class:`InputError` naming what is in the way otherwise (nothing is written then)."""
    folder = Path(folder)
    earlier = read_log(folder)
    if earlier is None:
        raise InputError(f"{folder / LOG_NAME} exists and is not an export log of this plugin; nothing was "
                         "written. Choose another folder")
    existing = [n for n in names if (folder / n).exists() or (folder / n).is_symlink()]
    foreign = [n for n in existing if n not in earlier or (folder / n).is_symlink() or not (folder / n).is_file()]
    changed = [n for n in existing if n not in foreign and earlier[n].get("sha256")
               and file_sha256(folder / n) != earlier[n]["sha256"]]
    if foreign:
        raise InputError(f"{len(foreign)} files in {folder} are not from an earlier export of these images "
                         f"({name_list(foreign)}); nothing was written. Choose another folder")
    if changed:
        raise InputError(f"{len(changed)} exported masks in {folder} were changed after the export "
                         f"({name_list(changed)}); nothing was written. Move them away or choose another folder")
    return ExportPlan(folder, earlier, set(existing))


__all__ = ["COLUMNS", "ExportPlan", "LOG_NAME", "file_sha256", "plan_export", "read_log"]
