"""A prompts file for the command line: each image's boxes and points, in its own pixel coordinates.

    {"case_001.png": {"boxes": [[x0, y0, x1, y1], ...], "points": [[x, y, 1 or 0], ...]}, ...}

One object per box (the mask is their union); a point's third value is 1 on the object, 0 off it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError, name_list


def read_prompts(path: str | Path, images: Sequence[Path]) -> dict[str, dict]:
    """The prompts of every image in ``images`` (keyed by file name), checked; one line says what is wrong."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"prompts file {p} does not exist") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"prompts file {p} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"prompts file {p} must map image file names to {{\"boxes\": ..., \"points\": ...}}")
    missing = [im.name for im in images if im.name not in data]
    if missing:
        raise InputError(f"prompts file {p} has no entry for {len(missing)} images ({name_list(missing)}); "
                         "give each image its boxes or points")
    out = {}
    for im in images:
        entry = data[im.name]
        if not isinstance(entry, dict) or not set(entry) <= {"boxes", "points"}:
            raise InputError(f"prompts of {im.name} in {p}: expected {{\"boxes\": [[x0, y0, x1, y1], ...], "
                             "\"points\": [[x, y, 1 or 0], ...]}}")
        for key, width in (("boxes", 4), ("points", 3)):
            value = entry.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, list) and len(v) == width and
                                                      all(isinstance(x, (int, float)) for x in v) for v in value):
                raise InputError(f"prompts of {im.name} in {p}: {key!r} must be a list of {width} numbers each")
        if not entry.get("boxes") and not entry.get("points"):
            raise InputError(f"prompts of {im.name} in {p} are empty; give a box or a point")
        out[im.name] = entry
    return out
