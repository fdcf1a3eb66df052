"""Shared fixtures: real data from ../shared/data (skipped with a reason when absent), small banks."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch._dynamo  # noqa: F401  load triton's LLVM before napari's OpenGL (Mesa) does; the reverse
#                      order is napari_matchseg._compat's job, tested in test_napari_plugin.py

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MATCHSEG_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _openvino_dir(tmp_path_factory):
    """One OpenVINO conversion of LiteMedSAM per session (module fixtures build models before per-test ones)."""
    folder = tmp_path_factory.mktemp("openvino")
    before = os.environ.get("MATCHSEG_OPENVINO_DIR")
    os.environ["MATCHSEG_OPENVINO_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("MATCHSEG_OPENVINO_DIR", None)
    else:
        os.environ["MATCHSEG_OPENVINO_DIR"] = before


@pytest.fixture(scope="session", autouse=True)
def _expected_qt_binding():
    """With MATCHSEG_EXPECT_QT set (test_qt6.py runs GUI tests again under PyQt6), the tests run on that binding."""
    expected = os.environ.get("MATCHSEG_EXPECT_QT")
    if expected:
        import qtpy

        assert qtpy.API_NAME == expected, f"GUI tests asked for {expected} but run on {qtpy.API_NAME}"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test touches the user's weights cache or the network by accident."""
    monkeypatch.setenv("MATCHSEG_CACHE_DIR", str(tmp_path_factory.mktemp("weights-cache")))
    monkeypatch.setenv("MATCHSEG_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))
    config = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("MATCHSEG_CONFIG_DIR", str(config))
    # the plugin's background embedding loads LiteMedSAM: only the tests of that feature turn it on
    (config / "settings.json").write_text('{"background_embedding": false}')


def dataset_dir(name: str) -> Path:
    d = DATA_ROOT / name
    if not (d / "manifest.csv").is_file():
        pytest.skip(f"real dataset {name!r} not found at {d} (set MATCHSEG_DATA to the shared data folder)")
    return d


def real_ids(name: str, split: str = "train", n: int | None = None, groups: tuple[str, ...] | None = None,
             stride: int = 1) -> list[str]:
    with open(dataset_dir(name) / "manifest.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split and (groups is None or r["group"] in groups)]
    ids = [r["id"] for r in rows][::stride]
    return ids[:n] if n else ids


def load_real(name: str, rid: str) -> tuple[np.ndarray, np.ndarray]:
    from napari_matchseg.image_io import read_image, read_mask

    d = dataset_dir(name)
    img = read_image(d / "images" / f"{rid}.png")
    return img, read_mask(d / "masks" / f"{rid}.png", img.shape)


@pytest.fixture
def sample_triples():
    from napari_matchseg.sample_data import make_sample

    return make_sample("ultrasound", 6) + make_sample("cells", 6)


@pytest.fixture
def bank(tmp_path, sample_triples):
    from napari_matchseg.bank import ReferenceBank

    b = ReferenceBank.create(tmp_path / "bank")
    b.add_many((img, m, name) for name, img, m in sample_triples)
    return b


TINY_MATCHSEG = dict(image_size=64, widths=(8, 16, 24, 32), reduced=(16, 16), heads=2)


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A small randomly initialised MatchSeg checkpoint (fast on a CPU; outputs are not meaningful)."""
    import torch

    from napari_matchseg.checkpoint import save_checkpoint
    from napari_matchseg.modeling import MatchSeg, MatchSegConfig

    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "tiny.safetensors", MatchSeg(MatchSegConfig(**TINY_MATCHSEG)), {"note": "random"})


def two_balls(n=24, size=96, seed=0):
    """Two bright ellipsoids apart in noise: (image, truth with values 1 and 2)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :size, :size]
    truth = np.zeros((n, size, size), np.uint8)
    for value, (cy, cx) in ((1, (30, 28)), (2, (62, 66))):
        truth[((z - (n - 1) / 2) ** 2 + ((y - cy) / 2.0) ** 2 + ((x - cx) / 2.0) ** 2) <= 8.0 ** 2] = value
    img = np.clip(60 + 120 * (truth > 0) + rng.normal(0, 12, truth.shape), 0, 255).astype(np.uint8)
    return img, truth


def sphere(n=24, size=96, r=8.5, seed=0):
    """A bright ellipsoid in noise: 18 slices with foreground, 3 empty ones above and below."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :size, :size]
    gt = ((z - (n - 1) / 2) ** 2 + ((y - size / 2 - 5) / 2.2) ** 2 + ((x - size / 2 + 7) / 2.2) ** 2) <= r ** 2
    return np.clip(60 + 120 * gt + rng.normal(0, 12, gt.shape), 0, 255).astype(np.uint8), gt
