import numpy as np
import pytest
from PIL import Image

from napari_matchseg.errors import InputError
from napari_matchseg.image_io import (check_image, check_mask, content_hash, read_image, read_mask, to_float_rgb,
                                      to_gray01, write_image, write_mask)

rng = np.random.default_rng(0)


@pytest.mark.parametrize("arr", [
    rng.integers(0, 256, (40, 50), dtype=np.uint8),
    rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),
    rng.integers(0, 256, (40, 50, 4), dtype=np.uint8),
    rng.integers(0, 65536, (40, 50), dtype=np.uint16),
    rng.integers(0, 65536, (40, 50, 3), dtype=np.uint16),
    rng.random((40, 50)).astype(np.float32),
    (rng.random((40, 50, 3)) * 1000).astype(np.float64),
], ids=["u8-gray", "u8-rgb", "u8-rgba", "u16-gray", "u16-rgb", "f32-gray", "f64-rgb"])
def test_lossless_round_trip(tmp_path, arr):
    from napari_matchseg.image_io import encode_image

    _, suffix = encode_image(arr)
    p = write_image(tmp_path / f"x{suffix}", arr)
    back = read_image(p)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    assert content_hash(back) == content_hash(arr)


def test_reads_16bit_png_and_jpeg_and_bmp(tmp_path):
    a16 = rng.integers(0, 4096, (30, 30), dtype=np.uint16)  # 12-bit data in a 16-bit container
    Image.fromarray(a16).save(tmp_path / "a.png")
    back = read_image(tmp_path / "a.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, a16)
    g = to_gray01(back)
    assert g.dtype == np.float32 and g.max() == pytest.approx(1.0) and g.min() == pytest.approx(0.0)
    rgb = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "b.jpg")
    Image.fromarray(rgb).save(tmp_path / "c.bmp")
    assert read_image(tmp_path / "b.jpg").shape == (30, 30, 3)
    np.testing.assert_array_equal(read_image(tmp_path / "c.bmp"), rgb)


def test_normalisation_conventions():
    gray = np.array([[0, 255], [128, 64]] * 4, dtype=np.uint8).repeat(4, 1)
    rgb = to_float_rgb(gray)
    assert rgb.shape == gray.shape + (3,) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[..., 0], gray / 255.0, rtol=1e-6)
    rgba = np.dstack([np.stack([gray] * 3, -1), np.zeros_like(gray)])
    np.testing.assert_allclose(to_float_rgb(rgba), rgb)  # alpha ignored


@pytest.mark.parametrize("arr, words", [
    (np.zeros((5, 40, 40), np.uint8), "channel"),
    (np.zeros((3, 40, 40), np.uint8), "channel-first"),
    (np.zeros((40, 40, 7), np.uint8), "3D stack"),
    (np.zeros((2, 3, 40, 40), np.uint8), "4 dimensions"),
    (np.zeros((40, 40), bool), "dtype bool"),
    (np.full((40, 40), np.nan, np.float32), "NaN"),
    (np.zeros((4, 40), np.uint8), "at least 8 x 8"),
])
def test_bad_images_are_explained(arr, words):
    with pytest.raises(InputError, match=words):
        check_image(arr)


def test_mask_rules():
    assert check_mask(np.array([[0, 3], [0, 0]], np.int32)).tolist() == [[False, True], [False, False]]
    with pytest.raises(InputError, match=r"\(20, 30\).*\(20, 31\)"):
        check_mask(np.zeros((20, 30), np.uint8), (20, 31))
    with pytest.raises(InputError, match="Threshold"):
        check_mask(np.zeros((20, 30), np.float32))
    with pytest.raises(InputError, match="empty"):
        check_mask(np.zeros((20, 30), np.uint8), allow_empty=False)


def test_mask_files(tmp_path):
    m = np.zeros((20, 20), bool)
    m[5:10, 5:10] = True
    write_mask(tmp_path / "m.png", m)
    assert set(np.unique(np.array(Image.open(tmp_path / "m.png")))) == {0, 255}
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), m)
    with pytest.raises(FileExistsError):
        write_mask(tmp_path / "m.png", m)  # never overwritten silently
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[m, 1] = 200
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), m)
    noisy = (m * 250 + rng.integers(0, 6, m.shape)).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "m.jpg", quality=80)
    assert (read_mask(tmp_path / "m.jpg") == m).mean() > 0.97  # JPEG artefacts are not foreground


def test_corrupt_and_missing_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(good)
    half = tmp_path / "half.png"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="half.png"):
        read_image(half)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="cannot read"):
        read_image(tmp_path / "text.png")
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="unsupported"):
        read_image(tmp_path / "x.gif")
