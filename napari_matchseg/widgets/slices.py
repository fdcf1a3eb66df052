"""The images and labels the plugin works on, read from napari layers: one image (2D) or one slice of a stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..image_io import check_image, check_mask
from ..series import SeriesInfo
from ..volume_io import volume_stem


ROLE = "matchseg_role"  # in a layer's metadata: a layer the plugin made for its own use (not the user's image)


def is_users_image(layer) -> bool:
    """An image layer the user works on (not the plugin's own, e.g. a proposal's probability map)."""
    from napari.layers import Image

    return isinstance(layer, Image) and ROLE not in (getattr(layer, "metadata", None) or {})


def get_layer(viewer, name: str, kind: str):
    if not name or name not in viewer.layers:
        raise InputError(f"choose a {kind} layer first")
    return viewer.layers[name]


def spatial_shape(image_layer) -> tuple[int, ...]:
    data = np.asarray(image_layer.data)
    return data.shape[: data.ndim - (1 if image_layer.rgb else 0)]


def series_info(image_layer) -> SeriesInfo | None:
    """For a folder of images of different sizes opened as one padded stack: each image's own size (else None)."""
    info = SeriesInfo.from_metadata((getattr(image_layer, "metadata", None) or {}).get("series"))
    data = np.asarray(image_layer.data)
    return info if info is not None and data.ndim - (1 if image_layer.rgb else 0) == 3 and \
        len(info) == data.shape[0] else None


def _slice(data: np.ndarray, idx: int, info: SeriesInfo | None) -> np.ndarray:
    return data[idx] if info is None else info.original(data[idx], idx)


def current_index(viewer, image_layer) -> int | None:
    """The slice on screen (None for a 2D image)."""
    data = np.asarray(image_layer.data)
    spatial = data.ndim - (1 if image_layer.rgb else 0)
    if spatial == 2:
        return None
    if spatial == 3:
        return min(max(int(viewer.dims.current_step[0]), 0), data.shape[0] - 1)
    raise InputError(f"layer {image_layer.name!r} has shape {data.shape}: expected a 2D image or a stack of 2D "
                     "images (one slice = one image)")


def slice_at_cursor(viewer, image_layer) -> tuple[int | None, np.ndarray]:
    """(slice index or None for a 2D image, the checked image) at the viewer's current position."""
    idx = current_index(viewer, image_layer)
    data = np.asarray(image_layer.data)
    if idx is None:
        return None, check_image(data, name=image_layer.name)
    return idx, check_image(_slice(data, idx, series_info(image_layer)), name=f"{image_layer.name} slice {idx}")


def all_slices(image_layer) -> list[np.ndarray]:
    data = np.asarray(image_layer.data)
    if data.ndim - (1 if image_layer.rgb else 0) == 2:
        return [check_image(data, name=image_layer.name)]
    info = series_info(image_layer)
    return [_slice(data, i, info) for i in range(data.shape[0])]


def to_frame(image_layer, array: np.ndarray) -> np.ndarray:
    """A mask or probability map of one slice as the layer's slice: padded into a series' frame when it is one."""
    info = series_info(image_layer)
    return array if info is None else info.to_frame(array, spatial_shape(image_layer)[1:])


def slice_name(image_layer, idx: int | None) -> str:
    """The export/reference stem: the source file's when known, else layer name (+ slice index)."""
    files = (getattr(image_layer, "metadata", None) or {}).get("files")
    if files and (idx is None and len(files) == 1 or idx is not None and idx < len(files)):
        return Path(files[0 if idx is None else idx]).stem
    src = getattr(getattr(image_layer, "source", None), "path", None)
    stem = Path(volume_stem(src)).stem if src and not Path(src).is_dir() else image_layer.name  # a.nii.gz -> a
    return stem if idx is None else f"{stem}_{idx:04d}"


def slice_origin(image_layer, idx: int | None) -> dict | None:
    """For a slice of a volume the plugin's reader opened: its source volume and index, kept in the bank."""
    volume = (getattr(image_layer, "metadata", None) or {}).get("volume")
    if idx is None or not volume:
        return None
    return {"volume": Path(volume["source"]).name or image_layer.name, "slice": int(idx), "axis": "z"}


def check_pair(image_layer, labels_layer) -> None:
    """Refuse labels the plugin made for another image (its proposal layer): storing them would pair one image with
    another's mask. Labels the user made have no owner and pass (their shape is checked when read)."""
    owner = (getattr(labels_layer, "metadata", None) or {}).get("image")
    if owner is not None and owner != image_layer.name:
        raise InputError(f"labels {labels_layer.name!r} belong to image {owner!r}, not to {image_layer.name!r}: "
                         f"choose {image_layer.name!r}'s labels, or select {owner!r}")


def labels_slice(labels_layer, idx: int | None, image: np.ndarray, image_layer=None) -> np.ndarray:
    """The labels of slice ``idx`` (their values, so that several objects stay apart); of a series' image, cut to
    that image's own size (the padding is not in it)."""
    data = np.asarray(labels_layer.data)
    sl = data if idx is None or data.ndim == 2 else data[idx]
    info = None if image_layer is None or idx is None else series_info(image_layer)
    if info is not None and sl.shape == spatial_shape(image_layer)[1:]:
        sl = info.crop(sl, idx)
    check_mask(sl, image.shape, name=f"labels {labels_layer.name!r}")
    return sl
