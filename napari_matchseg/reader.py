"""npe2 reader: a folder of images opened as a series (one image = one slice), or a volume.

A folder becomes one stack layer whose slider steps through its images, one on screen at a time (the file names
are kept in ``metadata["files"]`` so exports reuse their stems). A folder of mixed sizes is padded into one stack
and ``metadata["series"]`` says each image's own size, channels and dtype (:mod:`napari_matchseg.series`), so the
plugin works on every image exactly as read. A volume (NIfTI file,
DICOM series folder, multi-page TIFF) becomes one (Z, Y, X) layer with its voxel spacing as napari's ``scale``
and what the writer needs to write a mask like it in ``metadata["volume"]``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .image_io import list_images, read_image


def get_folder_reader(path):
    if isinstance(path, list):
        return None
    from .volume_io import is_volume_path

    if is_volume_path(path):
        return read_volume_layer
    if not Path(path).is_dir():
        return None
    try:
        files = list_images(path)
    except Exception:
        return None
    return read_folder if files else None


def read_folder(path) -> list[tuple]:
    from .series import stack_series

    files = list_images(path)
    stack, info = stack_series([read_image(f) for f in files])
    meta = {"files": [str(f) for f in files], **({"series": info.as_metadata()} if info is not None else {})}
    return [(stack, {"name": Path(path).name, "rgb": stack.ndim == 4, "metadata": meta}, "image")]


def read_volume_layer(path) -> list[tuple]:
    from .volume_io import read_volume, volume_stem

    vol = read_volume(path)
    for note in vol.notes:  # napari shows warnings as notifications
        warnings.warn(note, stacklevel=2)
    kwargs = {"name": volume_stem(path), "scale": vol.spacing, "rgb": vol.data.ndim == 4,
              "metadata": {"volume": {"source": vol.source, "kind": vol.kind, "spacing": vol.spacing,
                                      "affine": vol.affine.tolist(), "header": vol.header}}}
    if vol.contrast_limits is not None:
        kwargs["contrast_limits"] = vol.contrast_limits
    return [(vol.data, kwargs, "image")]
