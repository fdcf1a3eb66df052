"""MatchSeg checkpoints: safetensors files that carry their model config and training metadata.

Like segment-anything's ``build_sam``, :func:`build_matchseg` is the one place a model is made from a
checkpoint; the predictor, the CLI and the plugin all go through it. ``None`` means the embedded default
shipped inside the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import WeightsError
from .fsutil import atomic_write_bytes
from .modeling import MatchSeg, MatchSegConfig

FORMAT = "napari-matchseg-checkpoint"
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "matchseg_universal.safetensors"


def save_checkpoint(path: str | Path, model: MatchSeg, metadata: dict[str, Any] | None = None,
                    half: bool = False, overwrite: bool = True) -> Path:
    """Write weights (fp16 with ``half``) + config + metadata atomically."""
    from safetensors.torch import save

    dtype = torch.float16 if half else torch.float32
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.config.to_dict()),
            "metadata": json.dumps(metadata or {})}
    return atomic_write_bytes(path, save(tensors, metadata=meta), overwrite=overwrite)


def _unreadable(path: Path, exc: Exception) -> WeightsError:
    return WeightsError(f"{path} is not a readable safetensors checkpoint ({exc}); it may be incomplete "
                        "or corrupt. Re-export or re-download it")


def _header(path: Path) -> dict[str, str]:
    """The safetensors header's metadata of a MatchSeg checkpoint, without reading its weights."""
    if not path.is_file():
        raise WeightsError(f"MatchSeg checkpoint {path} does not exist")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    if meta.get("format") != FORMAT or "config" not in meta:
        raise WeightsError(f"{path} is a safetensors file but not a napari-matchseg checkpoint "
                           "(no MatchSeg config in its metadata)")
    return meta


def _training_metadata(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    try:
        return json.loads(meta.get("metadata", "{}"))
    except ValueError as exc:
        raise WeightsError(f"{path} has unreadable metadata: {exc}") from exc


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], MatchSegConfig, dict[str, Any]]:
    path = Path(path)
    meta = _header(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    try:
        config = MatchSegConfig.from_dict(json.loads(meta["config"]))
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{path} has an unreadable MatchSeg config: {exc}") from exc
    return state, config, _training_metadata(path, meta)


def checkpoint_bank(path: str | Path) -> str | None:
    """The bank folder a checkpoint was fine-tuned on (``finetune`` or ``semi``), as recorded; None for one
    trained on datasets. Reads only the file's header."""
    path = Path(path)
    metadata = _training_metadata(path, _header(path))
    semi = metadata.get("semi_supervised")
    return metadata.get("finetuned_on") or (semi.get("bank") if isinstance(semi, dict) else None)


def build_matchseg(checkpoint: str | Path | None = None) -> tuple[MatchSeg, dict[str, Any]]:
    """A MatchSeg model in eval mode (float32, CPU) and its metadata; ``None`` = the embedded default."""
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if checkpoint is None and not path.is_file():
        raise WeightsError(f"the embedded MatchSeg checkpoint is missing from the installation ({path}); "
                           "reinstall napari-matchseg")
    state, config, metadata = read_checkpoint(path)
    model = MatchSeg(config)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not match its own config ({str(exc)[:300]})") from exc
    metadata = dict(metadata, checkpoint=str(path))
    return model.eval(), metadata
