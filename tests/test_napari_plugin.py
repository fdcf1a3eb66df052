"""The npe2 manifest and the sample data inside a real napari viewer (needs a display: xvfb-run)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_manifest_is_valid_and_discovered():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("napari-matchseg")
    assert {s.key for s in mf.contributions.sample_data} == {"ultrasound", "cells"}
    npe2 = shutil.which("npe2", path=str(Path(sys.executable).parent))
    res = subprocess.run([npe2, "validate", "napari-matchseg"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_reader_is_offered_only_for_what_it_reads(tmp_path):
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()

    def offered(path) -> bool:
        return any(r.command.startswith("napari-matchseg.") for r in pm.iter_compatible_readers([str(path)]))

    (tmp_path / "folder").mkdir()
    assert offered(tmp_path / "folder") and offered(tmp_path / "brain.nii.gz") and offered(tmp_path / "s.TIF")
    assert not offered(tmp_path / "photo.png") and not offered(tmp_path / "notes.csv")  # napari's own readers


@pytest.mark.slow
def test_built_wheel_carries_the_top_level_manifest(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("napari_matchseg-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        shipped = z.read("napari_matchseg/napari.yaml")
        entry_points = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
    assert shipped == (REPO / "napari.yaml").read_bytes()
    assert "napari_matchseg:napari.yaml" in entry_points and "matchseg = napari_matchseg.cli:main" in entry_points
    extracted = tmp_path / "napari.yaml"
    extracted.write_bytes(shipped)
    npe2 = shutil.which("npe2", path=str(Path(sys.executable).parent))
    assert subprocess.run([npe2, "validate", str(extracted)], capture_output=True).returncode == 0


@pytest.mark.gui
def test_sample_data_opens_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-matchseg", "ultrasound")
    viewer.open_sample("napari-matchseg", "cells")
    names = [layer.name for layer in viewer.layers]
    assert names == ["sample ultrasound", "sample ultrasound labels", "sample cells", "sample cells labels"]
    us, us_labels = viewer.layers[0], viewer.layers[1]
    assert us.data.shape == (8, 160, 160) and us_labels.data.shape == (8, 160, 160)
    assert viewer.layers[2].rgb and viewer.layers[2].data.shape == (8, 128, 128, 3)
    assert np.asarray(us_labels.data).any()


@pytest.mark.gui
@pytest.mark.slow
def test_torch_models_load_after_napari_opengl_in_one_process(tmp_path):
    """Regression: triton's LLVM segfaulted a process whose OpenGL (Mesa llvmpipe) had loaded first."""
    import json

    cfg = tmp_path / "matchseg-gl-clip.json"
    cfg.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                   "head_width": 32, "patch_size": 16}, "text_cfg": {"context_length": 8, "vocab_size": 100,
                   "width": 16, "heads": 1, "layers": 1}}))
    make = (f"import open_clip, torch; open_clip.add_model_config({str(cfg)!r}); "
            f"torch.save(open_clip.create_model('matchseg-gl-clip').state_dict(), {str(tmp_path / 'w.pt')!r})")
    assert subprocess.run([sys.executable, "-c", make], capture_output=True).returncode == 0
    code = f"""
import numpy as np, napari
viewer = napari.Viewer(show=False)
viewer.add_image(np.zeros((32, 32)))
viewer.screenshot(canvas_only=True)  # OpenGL is up before any model code is imported
from napari_matchseg.retrieval.clip import ClipRetriever
r = ClipRetriever("matchseg-gl-clip", checkpoint={str(tmp_path / 'w.pt')!r}, model_config={str(cfg)!r})
print(r.embed([np.zeros((40, 40), np.uint8)]).shape)
viewer.close()
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(1, 16)" in res.stdout


@pytest.mark.gui
@pytest.mark.slow
def test_training_runs_after_napari_opengl_in_one_process(tmp_path):
    """Regression: the plugin's fine-tuning crashed napari (torch.optim imports triton after Mesa's LLVM)."""
    code = f"""
import numpy as np, napari
viewer = napari.Viewer(show=False)
viewer.add_image(np.zeros((32, 32)))
viewer.screenshot(canvas_only=True)  # OpenGL is up before any training code is imported
from napari_matchseg.bank import ReferenceBank
from napari_matchseg.checkpoint import build_matchseg, save_checkpoint
from napari_matchseg.modeling import MatchSeg, MatchSegConfig
from napari_matchseg.sample_data import make_sample
from napari_matchseg.training.finetune import finetune
base = save_checkpoint({str(tmp_path / 'b.safetensors')!r},
                       MatchSeg(MatchSegConfig(image_size=64, widths=(8, 16, 24, 32), reduced=(16, 16), heads=2)))
bank = ReferenceBank.create({str(tmp_path / 'bank')!r})
bank.add_many((img, m, name) for name, img, m in make_sample("ultrasound", 3))
out = finetune(bank, {str(tmp_path / 't.safetensors')!r}, base=base, steps=2, batch_size=2, log=lambda m: None)
print("tuned", build_matchseg(out)[1]["references"])
viewer.close()
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "tuned 3" in res.stdout
