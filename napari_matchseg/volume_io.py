"""Volumes in and out: NIfTI (nibabel), DICOM series (pydicom), multi-page TIFF / OME-TIFF (tifffile).

One convention, like :mod:`image_io`'s for 2D: a :class:`Volume` holds ``data`` as ``(Z, Y, X)`` (slice first;
``(Z, Y, X, C)`` for colour TIFF stacks), so ``data[z]`` is a 2D image in :mod:`image_io`'s sense and every 2D tool
works on it unchanged; ``spacing`` is (z, y, x) in the file's units (mm for NIfTI and DICOM), napari's ``scale``;
``affine`` maps the file's own voxel indices to world coordinates and is written back unchanged with a mask.
A NIfTI file's array is (i, j, k) = (x, y, z): ``data[z] = array[:, :, z].T``, the orientation of the shared
2D slices.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .fsutil import atomic_write_bytes

NIFTI_SUFFIXES = (".nii", ".nii.gz")
TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


@dataclasses.dataclass
class Volume:
    data: np.ndarray  # (Z, Y, X) or (Z, Y, X, C)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # z, y, x
    affine: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(4))  # the file's voxel -> world
    kind: str = "array"  # "nifti", "dicom", "tiff" or "array"
    source: str = ""
    header: Any = None  # the NIfTI header, written back with a mask
    contrast_limits: tuple[float, float] | None = None  # DICOM's window, when the header gives one
    notes: list[str] = dataclasses.field(default_factory=list)  # what the reader left out, for the user to see

    @property
    def n_slices(self) -> int:
        return int(self.data.shape[0])


def is_volume_path(path: str | Path) -> bool:
    """A NIfTI file, a multi-page TIFF, or a DICOM file / folder (the napari reader and the CLI ask this)."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return _dicom_files(path, probe=True) != []
    if name.endswith(NIFTI_SUFFIXES):
        return True
    if name.endswith(DICOM_SUFFIXES) or _is_dicom_file(path):
        return True
    if name.endswith(TIFF_SUFFIXES):
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return len(tif.series[0].shape) >= 3 and _tiff_zyx_shape(tif.series[0]) is not None
        except Exception:  # noqa: BLE001 - not a readable TIFF: let the 2D reader say why
            return False
    return False


def volume_stem(path: str | Path) -> str:
    """A volume file's name without its format's suffix (``brain.nii.gz`` -> ``brain``)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".tiff", ".tif", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_volume(path: str | Path) -> Volume:
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file or folder: {path}")
    name = path.name.lower()
    if path.is_dir() or name.endswith(DICOM_SUFFIXES) or _is_dicom_file(path):
        return read_dicom(path)
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if name.endswith(TIFF_SUFFIXES):
        return read_tiff_stack(path)
    raise InputError(f"{path.name}: not a volume format this package reads (NIfTI .nii/.nii.gz, a DICOM series "
                     "folder or file, a multi-page .tif/.tiff)")


# ------------------------------------------------------------------------------------------ NIfTI
def read_nifti(path: str | Path) -> Volume:
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds for a bad file
        raise InputError(f"{path.name} is not a readable NIfTI file (truncated or corrupt? {type(exc).__name__}: "
                         f"{exc}); export it again from its source") from exc
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise InputError(f"{path.name} has {arr.ndim} dimensions (shape {arr.shape}): a time series or several "
                         "channels. Only 3D volumes are read; save one volume (e.g. one time point) as its own file")
    zooms = (tuple(float(z) for z in img.header.get_zooms()[:3]) + (1.0, 1.0, 1.0))[:3]  # a 2D file has two
    data = np.ascontiguousarray(arr.transpose(2, 1, 0))
    return Volume(_finite(data, path), spacing=(zooms[2], zooms[1], zooms[0]), affine=np.asarray(img.affine),
                  kind="nifti", source=str(path), header=img.header.copy())


def _nifti_bytes(mask_zyx: np.ndarray, like: Volume | None, gz: bool) -> bytes:
    import nibabel as nib

    dtype = mask_zyx.dtype if mask_zyx.dtype in (np.uint8, np.uint16) else np.uint8
    arr = np.ascontiguousarray(mask_zyx.transpose(2, 1, 0)).astype(dtype)
    affine = like.affine if like is not None else affine_from_spacing((1.0, 1.0, 1.0))
    header = like.header.copy() if like is not None and like.header is not None else None
    img = nib.Nifti1Image(arr, affine, header=header)
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(1, 0)
    if like is not None and like.header is None:
        img.header.set_zooms(like.spacing[::-1])
    data = img.to_bytes()
    return gzip.compress(data, compresslevel=6, mtime=0) if gz else data


def affine_from_spacing(spacing_zyx) -> np.ndarray:
    return np.diag([spacing_zyx[2], spacing_zyx[1], spacing_zyx[0], 1.0])


# ------------------------------------------------------------------------------------------ DICOM
def _is_dicom_file(path: Path) -> bool:
    """A DICOM file by its 'DICM' preamble (DICOM files often have no extension)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _dicom_files(folder: Path, probe: bool = False) -> list[Path]:
    """Files of ``folder`` that are DICOM; ``probe`` stops at the first one."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and _is_dicom_file(p):
            found.append(p)
            if probe:
                break
    return found


def read_dicom(path: str | Path) -> Volume:
    """A series folder (or one file of it: its folder is read). Slices are ordered by their position along the
    slice normal (``ImagePositionPatient`` . normal of ``ImageOrientationPatient``; ``InstanceNumber`` where
    positions are missing); rescale slope / intercept are applied; the header's window is kept."""
    import pydicom

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    files = _dicom_files(folder)
    if not files:
        raise InputError(f"{folder} holds no DICOM files (none starts with the 'DICM' preamble)")
    others = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p not in files)
    notes = [f"{folder.name}: left out {len(others)} file(s) that are not DICOM: "
             f"{', '.join(others[:5])}{' ...' if len(others) > 5 else ''}"] if others else []
    series: dict[str, list] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{f.name} is not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append(ds)
    if len(series) > 1:
        parts = [f"{getattr(v[0], 'SeriesDescription', '') or uid} ({len(v)} files)" for uid, v in series.items()]
        raise InputError(f"{folder.name} mixes {len(series)} DICOM series: {'; '.join(parts)}. Put each series in "
                         "its own folder and open one")
    slices = next(iter(series.values()))
    normal = _slice_normal(slices[0])
    if normal is not None and all(hasattr(s, "ImagePositionPatient") for s in slices):
        pos = [float(np.dot(np.asarray(s.ImagePositionPatient, float), normal)) for s in slices]
    else:
        pos = [float(getattr(s, "InstanceNumber", i)) for i, s in enumerate(slices)]
    order = np.argsort(pos, kind="stable")
    slices, pos = [slices[i] for i in order], [pos[i] for i in order]
    try:
        planes = [s.pixel_array for s in slices]
    except Exception as exc:  # noqa: BLE001 - compressed without a decoder, truncated pixel data
        raise InputError(f"the pixel data of {folder.name} cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if len({p.shape for p in planes}) > 1:
        raise InputError(f"the slices of {folder.name} differ in size ({sorted({p.shape for p in planes})})")
    data = np.stack(planes)
    slope = float(getattr(slices[0], "RescaleSlope", 1) or 1)
    intercept = float(getattr(slices[0], "RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0:
        data = (data.astype(np.float32) * slope + intercept).astype(np.float32)
    dy, dx = (float(v) for v in getattr(slices[0], "PixelSpacing", (1.0, 1.0)))
    dz = float(np.median(np.diff(pos))) if len(pos) > 1 else float(getattr(slices[0], "SliceThickness", 1) or 1)
    if len(pos) > 1 and abs(dz) < 1e-6:
        raise InputError(f"the slices of {folder.name} share one position: not one 3D series")
    spacing = (abs(dz), dy, dx)
    return Volume(_finite(data, folder), spacing=spacing, affine=_dicom_affine(slices[0], spacing, normal),
                  kind="dicom", source=str(folder), contrast_limits=_window(slices[0]), notes=notes)


def _slice_normal(ds) -> np.ndarray | None:
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None or len(iop) != 6:
        return None
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    return np.cross(row, col)


def _dicom_affine(ds, spacing, normal) -> np.ndarray:
    """Voxel (x, y, z) -> RAS world (NIfTI's convention: DICOM's LPS with x and y flipped)."""
    if normal is None or not hasattr(ds, "ImagePositionPatient"):
        return affine_from_spacing(spacing)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = iop[:3] * spacing[2], iop[3:] * spacing[1], normal * spacing[0]
    lps[:3, 3] = np.asarray(ds.ImagePositionPatient, float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _window(ds) -> tuple[float, float] | None:
    """DICOM's first window (center, width) as napari contrast limits."""
    c, w = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if c is None or w is None:
        return None
    c, w = (float(v[0]) if not isinstance(v, (int, float)) and hasattr(v, "__len__") else float(v) for v in (c, w))
    return (c - w / 2, c + w / 2) if w > 0 else None


# ------------------------------------------------------------------------------------------- TIFF
def _tiff_zyx_shape(series) -> tuple | None:
    axes, shape = series.axes, series.shape
    kept = [(a, n) for a, n in zip(axes, shape) if n > 1 or a in "YX"]
    names = "".join(a for a, _ in kept)
    return tuple(n for _, n in kept) if names in ("ZYX", "QYX", "IYX", "TYX", "ZYXS", "IYXS", "QYXS") else None


def read_tiff_stack(path: str | Path) -> Volume:
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            s = tif.series[0]
            shape = _tiff_zyx_shape(s)
            if shape is None:
                raise InputError(f"{path.name} has axes {s.axes} (shape {s.shape}); a stack of 2D images "
                                 "(Z, Y, X) or of RGB images (Z, Y, X, 3) is expected")
            data = s.asarray().reshape(shape)
            spacing = _tiff_spacing(tif)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path.name} is not a readable TIFF stack ({type(exc).__name__}: {exc})") from exc
    return Volume(_finite(data, path), spacing=spacing, affine=affine_from_spacing(spacing), kind="tiff",
                  source=str(path))


def _tiff_spacing(tif) -> tuple[float, float, float]:
    """(z, y, x) from OME's PhysicalSize*, else ImageJ's ``spacing`` and the X/Y resolution tags (else 1)."""
    if tif.ome_metadata:
        size = {a: re.search(rf'PhysicalSize{a}="([0-9.eE+-]+)"', tif.ome_metadata) for a in "ZYX"}
        return tuple(float(m.group(1)) if m else 1.0 for m in size.values())
    page, spacing = tif.pages[0], {"Z": 1.0, "Y": 1.0, "X": 1.0}
    for axis in "XY":
        tag = page.tags.get(f"{axis}Resolution")
        if tag is not None and tag.value[0]:
            spacing[axis] = tag.value[1] / tag.value[0]  # pixels per unit -> units per pixel
    if tif.imagej_metadata and tif.imagej_metadata.get("spacing"):
        spacing["Z"] = float(tif.imagej_metadata["spacing"])
    return spacing["Z"], spacing["Y"], spacing["X"]


def _tiff_bytes(mask_zyx: np.ndarray, like: Volume | None) -> bytes:
    import tifffile

    spacing = like.spacing if like is not None else (1.0, 1.0, 1.0)
    buf = io.BytesIO()
    pixels = mask_zyx if mask_zyx.dtype != np.uint8 or mask_zyx.max(initial=0) > 1 else mask_zyx * np.uint8(255)
    tifffile.imwrite(buf, pixels, imagej=True,
                     resolution=(1 / spacing[2], 1 / spacing[1]), metadata={"spacing": spacing[0], "axes": "ZYX"})
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ writing
def write_mask_volume(path: str | Path, mask: np.ndarray, like: Volume | None = None, *,
                      overwrite: bool = False, values: bool = False) -> Path:
    """Write a (Z, Y, X) mask as NIfTI (``.nii`` / ``.nii.gz``: 0/1 uint8 with ``like``'s affine and header) or as
    a TIFF stack (``.tif``: 0/255 with ``like``'s spacing); atomically, and never over an existing file unless
    ``overwrite``. ``values``: keep label values (several objects: 0, 1, 2, ...; uint8, or uint16 above 255)."""
    path = Path(path)
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"a mask volume must be (Z, Y, X); got shape {mask.shape}")
    if like is not None and mask.shape != like.data.shape[:3]:
        raise InputError(f"the mask volume is {mask.shape} but its image volume is {like.data.shape[:3]}")
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; nothing was written. Choose another name or allow overwriting")
    name = path.name.lower()
    if values:
        if mask.dtype.kind not in "ui" or mask.min(initial=0) < 0 or mask.max(initial=0) > 65535:
            raise InputError(f"label values must be whole numbers from 0 to 65535; got {mask.dtype} "
                             f"from {mask.min(initial=0)} to {mask.max(initial=0)}")
        voxels = mask.astype(np.uint8 if mask.max(initial=0) <= 255 else np.uint16)
    else:
        voxels = (mask > 0).astype(np.uint8)
    if name.endswith(NIFTI_SUFFIXES):
        data = _nifti_bytes(voxels, like, gz=name.endswith(".gz"))
    elif name.endswith(TIFF_SUFFIXES):
        data = _tiff_bytes(voxels, like)
    else:
        raise InputError(f"{path.name}: write a mask volume as .nii.gz, .nii or .tif")
    return atomic_write_bytes(path, data, overwrite=overwrite)


def _finite(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise InputError(f"{Path(path).name} contains NaN or infinite values; replace them before use")
    if data.dtype.kind not in "uif":
        raise InputError(f"{Path(path).name} has voxels of type {data.dtype}; numbers are expected")
    return data


__all__ = ["Volume", "read_volume", "read_nifti", "read_dicom", "read_tiff_stack", "write_mask_volume",
           "is_volume_path", "volume_stem"]
