"""``matchseg propagate``: a volume's partial labels propagated slice to slice (:mod:`napari_matchseg.propagation`),
and the volume half of ``matchseg segment`` (one mask volume per input volume)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import progress_bar
from .proposal_args import add_proposal_args, pipeline_from_args

AXES = {"z": 0, "y": 1, "x": 2}


def mask_name(source: str | Path, out: Path, kind: str) -> Path:
    """The mask volume's path for a source volume: same name (``.nii.gz`` for a DICOM series, ``.tif`` kept)."""
    source = Path(source)
    name = source.name
    if kind == "dicom":
        stem = (source if source.is_dir() else source.parent).name
        return out / f"{stem}.nii.gz"
    if kind == "tiff":
        return out / (source.stem + ".tif")
    return out / name


def list_volumes(path: str | Path) -> list[Path]:
    """``path`` itself when it is a volume (a NIfTI / TIFF stack file, a DICOM series folder), else the volumes in
    the folder ``path`` (NIfTI files and multi-page TIFFs)."""
    from ..volume_io import NIFTI_SUFFIXES, is_volume_path

    path = Path(path)
    if path.is_file() or (path.is_dir() and is_volume_path(path)):
        return [path] if is_volume_path(path) else []
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and ".tmp-" not in p.name
                  and (p.name.lower().endswith(NIFTI_SUFFIXES) or (p.suffix.lower() in (".tif", ".tiff")
                                                                    and is_volume_path(p))))


def said(volume):
    """``volume``, after printing what its reader left out (e.g. non-DICOM files in a series folder)."""
    for note in volume.notes:
        print(f"note: {note}", file=sys.stderr)
    return volume


def segment_volumes(args, volumes: list[Path], out: Path) -> int:
    """Each volume's slices proposed from the bank; one mask volume each (same shape, affine and header)."""
    from ..propagation import segment_volume
    from ..volume_io import read_volume, write_mask_volume

    vols = [(p, said(read_volume(p))) for p in volumes]
    targets = [mask_name(p, out, v.kind) for p, v in vols]
    existing = [t.name for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise InputError(f"{len(existing)} mask volumes already exist in {out} ({', '.join(existing[:3])}); nothing "
                         "was written. Use --overwrite to replace them, or another --out folder")
    bank, pipeline = pipeline_from_args(args)
    out.mkdir(parents=True, exist_ok=True)
    for (path, vol), target in zip(vols, targets):
        with progress_bar(f"segmenting {path.name}") as update:
            mask = segment_volume(pipeline, vol.data, bank=bank, progress=update)
        write_mask_volume(target, mask, like=vol, overwrite=args.overwrite)
        print(f"wrote {target} ({int(mask.any(axis=(1, 2)).sum())} of {vol.n_slices} slices with foreground)")
    return 0


def cmd_propagate(args) -> int:
    from ..propagation import STATUSES, PropagationSettings, propagate
    from ..proposers import PROPOSERS
    from ..volume_io import read_volume, write_mask_volume

    vol, labels = said(read_volume(args.volume)), said(read_volume(args.labels))
    if labels.data.shape[:3] != vol.data.shape[:3]:
        raise InputError(f"--labels is {labels.data.shape[:3]} but {Path(args.volume).name} is "
                         f"{vol.data.shape[:3]}: give the partial labels of this volume")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists; nothing was written. Use --overwrite to replace it, or another --out")
    if out.suffix.lower() not in (".gz", ".nii", ".tif", ".tiff"):
        raise InputError(f"--out {out.name}: give a .nii.gz, .nii or .tif file name")
    axis = AXES[args.axis]
    data, lab = np.moveaxis(vol.data, axis, 0), np.moveaxis(labels.data, axis, 0)
    settings = PropagationSettings(neighbours=args.neighbours, min_confidence=args.min_confidence,
                                   min_quality=args.min_quality).check()  # before any model loads
    bank, pipeline = pipeline_from_args(args, bank_optional=True)
    with progress_bar("propagating") as update:
        result = propagate(pipeline, data, lab, bank=bank, settings=settings, progress=update)
    mask = np.moveaxis(result.mask, 0, axis)
    write_mask_volume(out, mask, like=vol, overwrite=args.overwrite)
    for note in result.notes:
        print(note, file=sys.stderr)
    counts = {s: result.status.count(s) for s in STATUSES}
    title = PROPOSERS.get(pipeline.config.proposer).label
    print(f"wrote {out} ({title} propagated): {counts['given']} slices given, {counts['proposed']} proposed, "
          f"{counts['not reached'] + counts['stopped']} left empty (along {args.axis})",
          file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({"status": result.status, "notes": result.notes, **counts}))
    return 0


def register(sub) -> None:
    c = sub.add_parser("propagate", help="propagate a volume's labelled slices to the neighbouring ones")
    c.add_argument("volume", help="the volume: NIfTI (.nii, .nii.gz), a DICOM series folder or a TIFF stack")
    c.add_argument("--labels", required=True, help="a volume of the same shape with some slices labelled (non-zero) "
                                                  "and the others empty")
    c.add_argument("--out", required=True, help="the mask volume to write (.nii.gz / .nii: the volume's affine and "
                                                "header; .tif: a 0/255 stack)")
    c.add_argument("--axis", default="z", choices=tuple(AXES), help="slice axis of the (z, y, x) volume: z is "
                                                                    "axial for a NIfTI file in the usual orientation")
    from ..propagation import PropagationSettings

    d = PropagationSettings()
    c.add_argument("--neighbours", type=int, default=d.neighbours,
                   help="already segmented slices of the volume given to a reference-based proposer as supports")
    c.add_argument("--min-confidence", type=float, default=d.min_confidence,
                   help="a proposal whose mean foreground probability is lower ends the walk")
    c.add_argument("--min-quality", type=float, default=d.min_quality,
                   help="the same for a proposer that predicts its mask's IoU (litemedsam)")
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    c.add_argument("--json", action="store_true", help="also print each slice's status as JSON")
    add_proposal_args(c)
    from ..propagation import PROPAGATION_PROPOSER

    c.set_defaults(func=cmd_propagate, proposer=PROPAGATION_PROPOSER)  # whatever --proposer 2D commands default to
