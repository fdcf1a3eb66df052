"""npe2 writers (File > Save Selected Layers): a Labels layer as mask files, or as a mask volume.

A volume's labels keep the source's geometry: the plugin's reader puts the volume's affine, header and spacing in
the image layer's metadata, and the plugin's proposal layer carries them along; any other labels layer is written
with its own scale as the voxel spacing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..image_io import write_mask


def write_labels(path: str, data, meta: dict) -> list[str]:
    """2D labels -> one PNG (0/255); a stack -> ``<stem>_<index>.png`` per slice. Never overwrites."""
    arr = np.asarray(data)
    out = Path(path)
    if out.suffix.lower() != ".png":
        out = out.with_suffix(".png")
    if arr.ndim == 2:
        return [str(write_mask(out, arr != 0, overwrite=False))]
    if arr.ndim == 3:
        return [str(write_mask(out.with_name(f"{out.stem}_{i:04d}.png"), arr[i] != 0, overwrite=False))
                for i in range(arr.shape[0])]
    raise ValueError(f"cannot write labels of shape {arr.shape} as mask files: expected 2D or a stack of 2D")


def write_labels_volume(path: str, data, meta: dict) -> list[str]:
    """Labels -> one NIfTI (``.nii.gz``, ``.nii``) or TIFF stack (``.tif``) with the source volume's affine,
    header and spacing, label values kept (several objects stay apart). Never overwrites."""
    from ..volume_io import write_mask_volume

    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"cannot write labels of shape {arr.shape} as a volume: expected (Z, Y, X)")
    return [str(write_mask_volume(path, arr, like=volume_like(meta, arr.shape), values=True))]


def volume_like(meta: dict, shape: tuple[int, ...]):
    """A :class:`~napari_matchseg.volume_io.Volume` holding only the geometry the layer's metadata gives."""
    from ..volume_io import Volume, affine_from_spacing

    info = (meta.get("metadata") or {}).get("volume") or {}
    scale = tuple(float(s) for s in (meta.get("scale") or (1.0, 1.0, 1.0))[-3:])
    spacing = tuple(float(s) for s in info.get("spacing", scale))
    affine = np.asarray(info["affine"], float) if "affine" in info else affine_from_spacing(spacing)
    empty = np.broadcast_to(np.zeros((), np.uint8), shape)  # the shape only: no memory
    return Volume(empty, spacing=spacing, affine=affine, kind=info.get("kind", "array"),
                  source=info.get("source", ""), header=info.get("header"))
