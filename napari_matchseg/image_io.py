"""Reading, checking, normalising and writing 2D images and masks.

One convention for the whole package:

* an *image* is a 2D array: grayscale ``(H, W)`` or colour ``(H, W, C)`` with C = 3 (RGB) or 4 (RGBA,
  alpha ignored); dtype uint8, uint16 (or any integer) or float, finite values;
* a *mask* is an integer or bool ``(H, W)`` array; non-zero is foreground;
* models and retrievers see :func:`to_float_rgb` / :func:`to_gray01` of an image: float32 in [0, 1],
  uint8 divided by 255, every other dtype rescaled by its 0.5 / 99.5 percentiles (so a 12-bit
  image in a uint16 container is not nearly black).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np

from .errors import InputError
from .fsutil import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_PIXELS = 1 << 28  # 268 million pixels (16384 x 16384): the largest image read; memory grows with it
WORKING_MAX_SIDE = 2048  # models and retrievers never look closer than this: larger images are reduced first


# --------------------------------------------------------------------------------------- checks
def check_image(image, name: str = "image") -> np.ndarray:
    """Return ``image`` as a validated ndarray, or raise :class:`InputError` saying what is wrong."""
    arr = np.asarray(image)
    if arr.dtype == bool or arr.dtype.kind not in "uif":
        raise InputError(f"{name} has dtype {arr.dtype}; expected uint8, uint16, another integer type "
                         "or float")
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        pass
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        pass
    elif arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] > 4:
        raise InputError(f"{name} has shape {arr.shape}, which looks channel-first; expected (H, W) or "
                         f"(H, W, 3|4). Use np.moveaxis(image, 0, -1) first")
    elif arr.ndim == 3:
        raise InputError(f"{name} has shape {arr.shape}: a 3D stack or an image with {arr.shape[-1]} "
                         "channels. Expected one 2D image, grayscale (H, W) or RGB/RGBA (H, W, 3|4); "
                         "take one slice of a stack at a time")
    else:
        raise InputError(f"{name} has {arr.ndim} dimensions (shape {arr.shape}); expected a 2D image, "
                         "grayscale (H, W) or RGB/RGBA (H, W, 3|4)")
    if min(arr.shape[:2]) < 8:
        raise InputError(f"{name} is only {arr.shape[0]} x {arr.shape[1]} pixels; at least 8 x 8 is needed")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinite values; replace them before use")
    return _narrowest_integer(arr)


def _narrowest_integer(arr: np.ndarray) -> np.ndarray:
    """Wide integer pixels (int32/int64, e.g. from ``image.tolist()``) as uint8 or uint16 when their values
    fit: the same picture then has the same dtype, hash and normalisation however it was handed over."""
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize < 4:
        return arr
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi <= 255:
        return arr.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return arr.astype(np.uint16)
    return arr


def reduce_for_model(image: np.ndarray, max_side: int = WORKING_MAX_SIDE) -> np.ndarray:
    """``image`` shrunk by an integer factor (block mean, in its own dtype) until its longer side is at most
    ``max_side``; smaller images are returned as they are. Models work at a few hundred pixels, so a
    10,000-pixel scan costs them no more time or memory than a 2,000-pixel one."""
    h, w = image.shape[:2]
    f = -(-max(h, w) // max_side)
    if f <= 1:
        return image
    hh, ww = h // f * f, w // f * f
    blocks = image[:hh, :ww].reshape(hh // f, f, ww // f, f, *image.shape[2:])
    out = blocks.mean(axis=(1, 3), dtype=np.float32)
    return out.round().astype(image.dtype) if image.dtype.kind in "iu" else out.astype(image.dtype)


def check_mask(mask, image_shape: tuple[int, ...] | None = None, name: str = "mask",
               allow_empty: bool = True) -> np.ndarray:
    """Return ``mask`` as a bool (H, W) array; refuse wrong dtypes, shapes and (optionally) empty masks."""
    arr = np.asarray(mask)
    if arr.dtype.kind not in "biu":
        raise InputError(f"{name} has dtype {arr.dtype}; a mask must be an integer or bool array "
                         "(non-zero = foreground). Threshold a probability map first, e.g. mask = prob > 0.5")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{name} has shape {arr.shape}; a mask must be 2D (H, W)")
    if image_shape is not None and tuple(arr.shape) != tuple(image_shape[:2]):
        raise InputError(f"{name} has shape {tuple(arr.shape)} but its image has shape "
                         f"{tuple(image_shape)}; they must have the same height and width")
    out = arr != 0
    if not allow_empty and not out.any():
        raise InputError(f"{name} is empty (no foreground pixel). Label the structure first, or allow "
                         "empty masks explicitly (allow_empty=True, --allow-empty) if the image "
                         "truly contains none")
    return out


MAX_OBJECT_ID = 65535  # object ids are stored as 16-bit PNG values


def object_labels(mask, name: str = "mask") -> np.ndarray | None:
    """The mask's object ids as uint8 / uint16 when it holds two or more different non-zero values (several
    objects kept apart), None when it is one object (or empty): that is stored as a plain 0/255 mask."""
    arr = np.asarray(mask)
    if arr.dtype.kind not in "iu":
        return None
    arr = arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr
    values = np.unique(arr)
    values = values[values != 0]
    if len(values) < 2:
        return None
    if values[0] < 0 or values[-1] > MAX_OBJECT_ID:
        raise InputError(f"{name} holds label values from {values[0]} to {values[-1]}; object ids must be "
                         f"between 1 and {MAX_OBJECT_ID} (0 is the background)")
    return arr.astype(np.uint8 if values[-1] <= 255 else np.uint16)


def content_hash(array: np.ndarray) -> str:
    """sha256 of dtype, shape and pixels: the same picture always gets the same key."""
    arr = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{arr.dtype.str}|{arr.shape}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------ normalise
def _rescale01(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    a = arr.astype(np.float32)
    lo, hi = np.percentile(a, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32, copy=False)


def to_float_rgb(image) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]; grayscale is replicated to three channels, alpha dropped."""
    arr = check_image(image)
    if arr.ndim == 3:
        arr = arr[..., :3]
    out = _rescale01(arr)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return np.ascontiguousarray(out)


def to_gray01(image) -> np.ndarray:
    """(H, W) float32 in [0, 1] (ITU-R 601 luma for colour images)."""
    arr = check_image(image)
    if arr.ndim == 3:
        rgb = _rescale01(arr[..., :3])
        return np.ascontiguousarray(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    return _rescale01(arr)


# ------------------------------------------------------------------------------------------ read
def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files of a folder (not recursive), sorted by name; hidden and temporary files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                  and ".tmp-" not in p.name)


_MAGIC = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
          (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"), (b"BM", "BMP"))


def sniff_format(path: Path) -> str | None:
    """The file's real format from its first bytes (a JPEG renamed to ``.png`` is still lossy)."""
    with open(path, "rb") as f:
        head = f.read(8)
    return next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)


def _read_raw(path: Path, palette_indices: bool = False) -> tuple[np.ndarray, str | None]:
    """The file's pixels and its real format. ``palette_indices``: a palette image without black keeps its
    indices (a label mask stores classes as indices, index 0 the background, whatever colour it is shown in;
    with black among its colours, black is the background as in any other mask file)."""
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unsupported file type {suffix!r}; supported: {', '.join(IMAGE_SUFFIXES)}")
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if not path.is_file():  # a FIFO would block open() for ever; a device or a folder is no image either
        raise InputError(f"{path} is not a regular file (a folder, FIFO or device); give an image file")
    try:
        fmt = sniff_format(path)
        if fmt == "TIFF":
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if len(tif.pages) > 1:
                    raise InputError(f"{path} holds {len(tif.pages)} pages (a stack), not one 2D image: save one "
                                     "page per file, or open it as a volume (the napari reader, matchseg "
                                     "propagate)")
                page = tif.pages[0]
                _check_pixel_count(path, int(np.prod(page.shape[:2])) if page.ndim >= 2 else 0)
                arr = tif.asarray()
            if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] > 4:
                arr = np.moveaxis(arr, 0, -1)  # planar RGB
            return arr, fmt
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # our limit, checked below with a message that says what to do
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            _check_pixel_count(path, im.width * im.height)
            im.load()
            mode = im.mode
            if mode in ("1", "LA"):
                im = im.convert("L")
            elif mode == "P" and not (palette_indices and not _palette_has_black(im)):
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            arr = np.array(im)
            fmt = im.format or fmt
        if mode == "I" and arr.size and arr.min() >= 0 and arr.max() < 65536:
            arr = arr.astype(np.uint16)  # 16-bit PNGs that Pillow opened as 32-bit
        return arr, fmt
    except InputError:
        raise
    except Exception as exc:  # truncated, corrupt, or not an image at all
        raise InputError(f"cannot read {path}: {exc}. The file may be incomplete or not an image") from exc


def _palette_has_black(im) -> bool:
    used = [i for _, i in (im.getcolors(256) or [])]
    palette = im.getpalette() or []
    return any(palette[3 * i:3 * i + 3] == [0, 0, 0] for i in used)


def _check_pixel_count(path: Path, pixels: int) -> None:
    if pixels > MAX_PIXELS:
        raise InputError(f"{path} has {pixels / 1e6:.0f} million pixels; at most {MAX_PIXELS / 1e6:.0f} million "
                         "(16384 x 16384) are supported. Downscale or tile it first")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG, JPEG, TIFF (8/16-bit, float) or BMP image and check it (see module docstring)."""
    path = Path(path)
    return check_image(_read_raw(path)[0], name=str(path))


def read_mask(path: str | os.PathLike, image_shape: tuple[int, ...] | None = None,
              allow_empty: bool = True, allow_full: bool = False) -> np.ndarray:
    """Read a mask file as bool (H, W).

    Colour mask files count a pixel as foreground when any channel is non-zero; palette (indexed) files
    when its palette index is non-zero. JPEG files (recognised by content, whatever their name) are
    lossy, so they are thresholded at half their maximum instead of at zero. A mask that is foreground
    everywhere is refused unless ``allow_full``: it almost always means a background that is not 0.
    """
    path = Path(path)
    arr, fmt = _read_raw(path, palette_indices=True)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].max(axis=-1)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError(f"{path} contains NaN or infinite values")
        arr = arr > 0.5 * float(arr.max()) if arr.max() > 0 else np.zeros(arr.shape, bool)
    elif fmt == "JPEG" and arr.max() > 0:
        arr = arr > arr.max() // 2
    mask = check_mask(arr, image_shape, name=str(path), allow_empty=allow_empty)
    if not allow_full and mask.size and mask.all():
        raise InputError(f"{path} is foreground everywhere (no pixel is 0), so its background is probably white "
                         "or another colour. Save the mask with background 0 (e.g. 0/255 PNG); if the structure "
                         "truly fills the image, allow full masks explicitly (--allow-full)")
    return mask


# ----------------------------------------------------------------------------------------- write
def encode_image(image: np.ndarray) -> tuple[bytes, str]:
    """Lossless bytes for ``image`` and the suffix they need: PNG for uint8, TIFF otherwise."""
    arr = np.ascontiguousarray(image)
    buf = io.BytesIO()
    if arr.dtype == np.uint8:
        from PIL import Image

        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), ".png"
    import tifffile

    photometric = "rgb" if arr.ndim == 3 else "minisblack"
    tifffile.imwrite(buf, arr, photometric=photometric, compression="zlib",
                     extrasamples=("unassalpha",) if arr.ndim == 3 and arr.shape[-1] == 4 else None)
    return buf.getvalue(), ".tif"


def write_image(path: str | os.PathLike, image: np.ndarray, overwrite: bool = False) -> Path:
    """Atomically write ``image`` losslessly; ``path``'s suffix must match :func:`encode_image`."""
    data, _ = encode_image(check_image(image))
    return atomic_write_bytes(path, data, overwrite=overwrite)


def encode_mask_png(mask: np.ndarray, value: int = 255) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.asarray(mask) != 0).view(np.uint8) * np.uint8(value)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_labels_png(labels: np.ndarray) -> bytes:
    """Object ids as an 8- or 16-bit PNG (values kept: 0 background, 1..n the objects)."""
    from PIL import Image

    arr = np.ascontiguousarray(labels)
    buf = io.BytesIO()
    Image.fromarray(arr if arr.dtype == np.uint8 else arr.astype(np.uint16)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def read_labels(path: str | os.PathLike, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A label file's object ids (uint8 / uint16 (H, W)), as :func:`encode_labels_png` wrote them."""
    path = Path(path)
    arr, _ = _read_raw(path, palette_indices=True)
    if arr.dtype.kind not in "u" or arr.ndim != 2:
        raise InputError(f"{path} is not a label file (one channel of unsigned integers); it holds {arr.dtype} "
                         f"pixels of shape {arr.shape}")
    check_mask(arr, image_shape, name=str(path))
    return arr


def write_labels(path: str | os.PathLike, labels: np.ndarray, overwrite: bool = False) -> Path:
    """Atomically write object ids as an 8- or 16-bit PNG."""
    arr = np.asarray(labels)
    check_mask(arr)
    if arr.dtype.kind not in "biu" or (arr.size and (arr.min() < 0 or arr.max() > MAX_OBJECT_ID)):
        raise InputError(f"labels for {path} must be integers from 0 to {MAX_OBJECT_ID}")
    return atomic_write_bytes(path, encode_labels_png(arr.astype(np.uint8 if arr.max(initial=0) <= 255
                                                                 else np.uint16)), overwrite=overwrite)


def write_mask_tiff(path: str | os.PathLike, mask: np.ndarray, overwrite: bool = False,
                    value: int = 255) -> Path:
    """Atomically write a binary mask as an 8-bit TIFF, 0 / ``value``."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.where(check_mask(mask), value, 0).astype(np.uint8), compression="zlib")
    return atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)


def write_mask(path: str | os.PathLike, mask: np.ndarray, overwrite: bool = False,
               value: int = 255) -> Path:
    """Atomically write a binary mask as an 8-bit PNG, 0 / ``value``."""
    return atomic_write_bytes(path, encode_mask_png(check_mask(mask), value), overwrite=overwrite)
