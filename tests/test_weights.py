"""The weights manager against a real HTTP server on 127.0.0.1 (no mock of the download itself)."""

import hashlib
import http.server
import json
import os
import threading

import pytest

from napari_matchseg import weights
from napari_matchseg.errors import WeightsError

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log: list = []
    dropped: set = set()

    def log_message(self, *a):
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).log.append((self.path, rng))
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        body = PAYLOAD if not self.path.startswith("/corrupt") else PAYLOAD[::-1]
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        part = body[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(part)))
        self.send_header("Accept-Ranges", "bytes")
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if self.path.startswith("/drop") and self.path not in type(self).dropped:
            type(self).dropped.add(self.path)  # first time: send 40 %, then drop the connection
            self.wfile.write(part[: len(part) * 2 // 5])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(part)


@pytest.fixture
def server():
    _Handler.log = []
    _Handler.dropped = set()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Handler.log
    srv.shutdown()
    srv.server_close()


def _entry(url, name="test-model", sha=SHA):
    return weights.WeightsEntry(name, url, f"{name}.bin", len(PAYLOAD) / 1e6, sha, "test")


def test_good_download_is_verified_cached_and_never_repeated(server):
    base, log = server
    e = _entry(f"{base}/good.bin")
    seen = []
    path = weights.fetch(e, offline=False, progress=lambda d, t: seen.append((d, t)))
    assert path == weights.where(e) and path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert json.loads((path.parent / "test-model.bin.sha256").read_text())["sha256"] == SHA
    assert weights.fetch(e, offline=False) == path
    assert weights.fetch(e, offline=True) == path  # cached: works offline too
    assert len(log) == 1  # one request in all


def test_unpinned_checksum_is_recorded_at_first_download_and_enforced(server):
    base, _ = server
    e = _entry(f"{base}/good.bin", name="unpinned", sha=None)
    path = weights.fetch(e, offline=False)
    rec = json.loads((path.parent / "unpinned.bin.sha256").read_text())
    assert rec["sha256"] == SHA and "first download" in rec["origin"]
    path.write_bytes(PAYLOAD[:-1] + b"X")  # damaged later on disk
    with pytest.raises(WeightsError, match="does not match the expected sha256"):
        weights.fetch(e, offline=True)


def test_corrupt_download_is_refused_and_discarded(server):
    base, _ = server
    e = _entry(f"{base}/corrupt.bin")
    with pytest.raises(WeightsError, match="corrupt"):
        weights.fetch(e, offline=False)
    assert not weights.where(e).exists()
    assert not [p for p in weights.cache_dir().iterdir() if p.name.startswith("test-model")]


def test_dropped_connection_resumes_where_it_stopped(server):
    base, log = server
    e = _entry(f"{base}/drop.bin")
    with pytest.raises(WeightsError, match="interrupted.*resumed"):
        weights.fetch(e, offline=False, retries=0)
    part = weights.where(e).with_name("test-model.bin.part")
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD)
    path = weights.fetch(e, offline=False)
    assert path.read_bytes() == PAYLOAD and not part.exists()
    assert log[-1] == ("/drop.bin", f"bytes={kept}-")  # only the rest was asked for


def test_dropped_connection_is_retried_automatically(server):
    base, log = server
    e = _entry(f"{base}/drop.bin", name="auto")
    assert weights.fetch(e, offline=False).read_bytes() == PAYLOAD
    assert [r for _, r in log][0] is None and log[1][1].startswith("bytes=")


def test_404_names_the_url(server):
    base, _ = server
    with pytest.raises(WeightsError, match=r"missing\.bin.*404"):
        weights.fetch(_entry(f"{base}/missing.bin"), offline=False)


def test_offline_error_names_file_url_and_place(server):
    base, log = server
    e = _entry(f"{base}/good.bin")
    with pytest.raises(WeightsError) as err:
        weights.fetch(e)  # MATCHSEG_OFFLINE=1 in tests
    msg = str(err.value)
    assert f"{base}/good.bin" in msg and str(weights.where(e)) in msg and "offline" in msg
    assert log == []


def test_manually_placed_file_is_used_without_any_request(server):
    base, log = server
    e = _entry(f"{base}/good.bin")
    weights.where(e).parent.mkdir(parents=True, exist_ok=True)
    weights.where(e).write_bytes(PAYLOAD)
    assert weights.fetch(e, offline=False) == weights.where(e)
    assert log == []
    weights.where(e).write_bytes(b"not the model")  # a wrong file in the official place
    with pytest.raises(WeightsError, match="Delete it"):
        weights.fetch(e, offline=False)
    assert log == []  # never silently replaced by a download


def test_explicit_path_wins_and_cache_dir_is_configurable(tmp_path, monkeypatch):
    own = tmp_path / "my-finetuned.pt"
    own.write_bytes(b"whatever")
    assert weights.fetch("sam2.1_hiera_tiny", path=own) == own
    with pytest.raises(WeightsError, match="does not exist"):
        weights.fetch("sam2.1_hiera_tiny", path=tmp_path / "nope.pt")
    monkeypatch.setenv("MATCHSEG_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert weights.where("sam2.1_hiera_tiny") == tmp_path / "elsewhere" / "sam2.1_hiera_tiny.pt"
    with pytest.raises(WeightsError, match="unknown checkpoint 'nope'"):
        weights.get_entry("nope")


def test_registry_lists_the_required_models():
    names = set(weights.REGISTRY)
    assert {"clip-vit-b-32-laion2b", "dinov2_vits14", "dinov2_vitb14", "sam2.1_hiera_tiny", "sam2.1_hiera_small",
            "sam2.1_hiera_base_plus", "sam2.1_hiera_large"} <= names
    for e in weights.REGISTRY.values():
        assert e.url.startswith("https://") and e.license and e.size_mb
