"""npe2 reader: a folder of images opened as a series (one image = one slice), or a volume.

Images of one size become one stack layer (the file names are kept in ``metadata["files"]`` so exports reuse
their stems); a folder of mixed sizes becomes one layer per image, named by its stem. A volume (NIfTI file,
DICOM series folder, multi-page TIFF) becomes one (Z, Y, X) layer with its voxel spacing as napari's ``scale``
and what the writer needs to write a mask like it in ``metadata["volume"]``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

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
    files = list_images(path)
    images = [read_image(f) for f in files]
    shapes = {(im.shape, im.dtype.str) for im in images}
    if len(shapes) == 1:
        rgb = images[0].ndim == 3
        stack = np.stack(images)
        return [(stack, {"name": Path(path).name, "rgb": rgb, "metadata": {"files": [str(f) for f in files]}},
                 "image")]
    return [(im, {"name": f.stem, "rgb": im.ndim == 3, "metadata": {"files": [str(f)]}}, "image")
            for f, im in zip(files, images)]


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
