"""A folder of images of different sizes as one series: one stack a viewer can step through, every image exact.

napari shows a series as one (N, H, W[, 3]) layer whose slider steps from image to image, so only the current
image is on screen and every slice-wise action (propose all, the review queue, export) covers the whole folder.
Images of different sizes are padded at the bottom and right to the largest; a series that mixes gray and colour
images shows the gray ones as colour (RGB beside RGBA: opaque RGBA), and mixed dtypes share one that holds them
all. :class:`SeriesInfo` records
each image's own size, channels and dtype, so :meth:`SeriesInfo.original` gives back exactly the image that was
read (its content hash, hence its bank reference, is the file's) and :meth:`SeriesInfo.to_frame` pads a mask or
probability map of that image back into the stack's frame.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import InputError


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    sizes: tuple[tuple[int, int], ...]  # each image's (height, width)
    channels: tuple[int, ...]  # 0 (gray), 3 or 4: shown with the stack's channels, given back with its own
    dtypes: tuple[str, ...]

    def as_metadata(self) -> dict:
        return {"sizes": [list(s) for s in self.sizes], "channels": list(self.channels),
                "dtypes": list(self.dtypes)}

    @classmethod
    def from_metadata(cls, meta: dict | None) -> SeriesInfo | None:
        """The series a layer's ``metadata["series"]`` describes, or None (an ordinary stack or a damaged entry)."""
        if not isinstance(meta, dict):
            return None
        try:
            sizes = tuple((int(h), int(w)) for h, w in meta["sizes"])
            channels = tuple(int(c) for c in meta["channels"])
            dtypes = tuple(str(np.dtype(d)) for d in meta["dtypes"])
        except (KeyError, TypeError, ValueError):
            return None
        ok = len(sizes) == len(channels) == len(dtypes) and set(channels) <= {0, 3, 4}
        return cls(sizes, channels, dtypes) if ok else None

    def __len__(self) -> int:
        return len(self.sizes)

    def original(self, frame: np.ndarray, i: int) -> np.ndarray:
        """Image ``i`` as it was read, from its padded slice ``frame`` of the stack."""
        h, w = self.sizes[i]
        if frame.shape[0] < h or frame.shape[1] < w:
            raise InputError(f"image {i} of the series is {h} x {w} but its slice is {frame.shape[0]} x "
                             f"{frame.shape[1]}: the layer was changed after it was opened; open the folder again")
        image = frame[:h, :w]
        if image.ndim == 3:
            image = image[..., 0] if self.channels[i] == 0 else image[..., :self.channels[i]]
        return np.ascontiguousarray(image.astype(self.dtypes[i], copy=False))

    def crop(self, mask: np.ndarray, i: int) -> np.ndarray:
        """A mask slice of the stack cut to image ``i``'s own size."""
        h, w = self.sizes[i]
        return mask[:h, :w]

    def to_frame(self, array: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
        """A mask or map of one image padded (with zeros) into the stack's frame."""
        array = np.asarray(array)
        if array.shape[:2] == tuple(frame_shape):
            return array
        out = np.zeros((*frame_shape, *array.shape[2:]), array.dtype)
        out[:array.shape[0], :array.shape[1]] = array
        return out


def stack_series(images: list[np.ndarray]) -> tuple[np.ndarray, SeriesInfo | None]:
    """(stack, info): the images as one stack; ``info`` is None when they share size, channels and dtype (a plain
    stack, nothing to undo)."""
    if not images:
        raise InputError("a series needs at least one image")
    if len({(im.shape, im.dtype.str) for im in images}) == 1:
        return np.stack(images), None
    channels = tuple(im.shape[2] if im.ndim == 3 else 0 for im in images)
    c = max(channels)
    dtype = np.result_type(*[im.dtype for im in images])
    h, w = max(im.shape[0] for im in images), max(im.shape[1] for im in images)
    stack = np.zeros((len(images), h, w, c) if c else (len(images), h, w), dtype)
    opaque = np.iinfo(dtype).max if dtype.kind in "iu" else 1.0
    for i, im in enumerate(images):
        frame = stack[i, :im.shape[0], :im.shape[1]]
        if c and im.ndim == 2:
            frame[..., :3] = im[..., None]
        elif c:
            frame[..., :im.shape[2]] = im
        else:
            frame[...] = im
        if c == 4 and channels[i] != 4:
            frame[..., 3] = opaque
    info = SeriesInfo(tuple((im.shape[0], im.shape[1]) for im in images), channels,
                      tuple(str(im.dtype) for im in images))
    return stack, info


__all__ = ["SeriesInfo", "stack_series"]
