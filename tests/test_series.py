"""A mixed folder as one series, and an export that updates its earlier export (Qt-free parts)."""

import numpy as np
import pytest

from napari_matchseg.errors import InputError
from napari_matchseg.export_log import LOG_NAME, file_sha256, plan_export, read_log
from napari_matchseg.series import SeriesInfo, stack_series


def test_every_image_of_a_mixed_series_comes_back_exactly():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (20, 30), dtype=np.uint8), rng.integers(0, 65535, (40, 10, 3), dtype=np.uint16),
              rng.random((12, 12, 4), dtype=np.float32), rng.integers(0, 255, (9, 50, 3), dtype=np.uint8)]
    stack, info = stack_series(images)
    assert stack.shape == (4, 40, 50, 4) and stack.dtype == np.float32
    assert (stack[0, :20, :30, 3] == 1).all()  # a gray image in an RGBA float stack is opaque
    info = SeriesInfo.from_metadata(info.as_metadata())  # as kept in a layer's metadata
    for i, im in enumerate(images):
        back = info.original(stack[i], i)
        assert back.dtype == im.dtype and np.array_equal(back, im)
    mask = np.ones((9, 50), np.uint8)
    framed = info.to_frame(mask, (40, 50))
    assert framed.shape == (40, 50) and framed[:9].all() and not framed[9:].any()
    assert np.array_equal(info.crop(framed, 3), mask)
    with pytest.raises(InputError, match="changed after it was opened"):
        info.original(stack[1][:20], 1)


def test_one_size_is_a_plain_stack_and_damaged_metadata_is_ignored():
    same = [np.zeros((16, 16), np.uint8)] * 3
    stack, info = stack_series(same)
    assert stack.shape == (3, 16, 16) and info is None
    assert SeriesInfo.from_metadata({"sizes": [[1, 2]], "channels": [2], "dtypes": ["uint8"]}) is None
    assert SeriesInfo.from_metadata({"sizes": "x"}) is None and SeriesInfo.from_metadata(None) is None


def test_an_export_updates_only_its_own_unchanged_files(tmp_path):
    assert plan_export(tmp_path, ["a.png"]).replace == set()  # an empty folder
    (tmp_path / "a.png").write_bytes(b"mine")
    sha = file_sha256(tmp_path / "a.png")
    (tmp_path / LOG_NAME).write_text(f"file,slice,source,reference,sha256\na.png,,manual,a,{sha}\nb.png,,manual,b,\n")
    plan = plan_export(tmp_path, ["a.png", "c.png"])
    assert plan.replace == {"a.png"} and set(read_log(tmp_path)) == {"a.png", "b.png"}
    text = plan.csv_text([{"file": "a.png", "source": "manual", "reference": "a2", "sha256": "x"}])
    assert text.splitlines()[1].startswith("b.png,") and text.splitlines()[2].startswith("a.png,")  # b's row kept
    (tmp_path / "a.png").write_bytes(b"edited by someone")
    with pytest.raises(InputError, match="changed after the export"):
        plan_export(tmp_path, ["a.png"])
    (tmp_path / "d.png").write_bytes(b"theirs")
    with pytest.raises(InputError, match="not from an earlier export"):
        plan_export(tmp_path, ["d.png"])
    (tmp_path / LOG_NAME).write_text("patient,diagnosis\n1,x\n")
    with pytest.raises(InputError, match="not an export log"):
        plan_export(tmp_path, ["c.png"])
