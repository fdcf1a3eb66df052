"""A prompts file for the command line: each image's boxes and points, in its own pixel coordinates.

    {"case_001.png": {"boxes": [[x0, y0, x1, y1], ...], "points": [[x, y, 1 or 0], ...]}, ...}

One object per box (the mask is their union); a point's third value is 1 on the object, 0 off it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError, name_list


MAX_COORDINATE = 1e6  # pixels: no image is larger; 1e308 is a mistake, not a coordinate


def _coordinate(x) -> bool:
    """A finite number in pixels (a bool is not a number here, though Python says it is an int)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) < MAX_COORDINATE


def read_prompts(path: str | Path, images: Sequence[Path]) -> dict[str, dict]:
    """The prompts of every image in ``images`` (keyed by file name), checked; one line says what is wrong."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"prompts file {p} does not exist") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"prompts file {p} is not valid JSON ({str(exc)[:120]})") from exc
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
                                                      all(_coordinate(x) for x in v) for v in value):
                raise InputError(f"prompts of {im.name} in {p}: {key!r} must be a list of {width} numbers each "
                                 f"(pixel coordinates under {MAX_COORDINATE:g})")
            if key == "points" and any(v[2] not in (0, 1) for v in value):
                raise InputError(f"prompts of {im.name} in {p}: a point's third value is 1 (on the object) or 0 "
                                 "(not on it)")
        if not entry.get("boxes") and not entry.get("points"):
            raise InputError(f"prompts of {im.name} in {p} are empty; give a box or a point")
        out[im.name] = entry
    return out
