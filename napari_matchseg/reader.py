"""npe2 reader: a folder of images opened as a series (one image = one slice).

Images of one size become one stack layer (the file names are kept in ``metadata["files"]`` so exports reuse
their stems); a folder of mixed sizes becomes one layer per image, named by its stem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .image_io import list_images, read_image


def get_folder_reader(path):
    if isinstance(path, list) or not Path(path).is_dir():
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
