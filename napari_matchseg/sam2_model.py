"""Building SAM 2.1 models from the official package, configs and checkpoints (``{"model": state_dict}``).

Checkpoints come through the weights manager (cache, offline mode, local files). ``image_size`` below the
official 1024 runs SAM 2 at a lower resolution (the memory attention's RoPE grid is resized to match), which
is how the tests run a randomly initialised model fast on a CPU; real checkpoints are meant for 1024.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import weights
from ._compat import avoid_triton_llvm_clash
from .device import resolve_device
from .errors import WeightsError
from .sam2_configs import DEFAULT_SAM2, SAM2_CONFIGS

def size_overrides(image_size: int) -> list[str]:
    if image_size % 16:
        raise ValueError(f"SAM 2 image_size must be a multiple of 16, got {image_size}")
    g = image_size // 16
    return [f"++model.image_size={image_size}",
            f"++model.memory_attention.layer.self_attention.feat_sizes=[{g},{g}]",
            f"++model.memory_attention.layer.cross_attention.feat_sizes=[{g},{g}]"]


def build_sam2_model(name: str = DEFAULT_SAM2, checkpoint: str | Path | None = None, device: str | None = "auto",
                     image_size: int = 1024, random_init: bool = False) -> torch.nn.Module:
    """A SAM2Base in eval mode on ``device``; ``random_init`` skips the weights (tests, benchmarks)."""
    if name not in SAM2_CONFIGS:
        raise WeightsError(f"unknown SAM 2 model {name!r}; choose one of {', '.join(SAM2_CONFIGS)}")
    avoid_triton_llvm_clash()
    from sam2.build_sam import build_sam2

    path = None if random_init else weights.fetch(name, path=checkpoint)
    dev = resolve_device(device)
    overrides = size_overrides(image_size) if image_size != 1024 else []
    try:
        model = build_sam2(SAM2_CONFIGS[name], None, device="cpu", hydra_overrides_extra=overrides)
    except Exception as exc:
        raise WeightsError(f"cannot build SAM 2 {name} from the installed sam2 package: {exc}") from exc
    if path is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise weights.unreadable(path, f"SAM 2 {name}", exc) from exc
        if not isinstance(state, dict) or "model" not in state:
            raise WeightsError(f"{path} is not an official SAM 2 checkpoint (expected a dict with a 'model' key)")
        try:
            model.load_state_dict(state["model"], strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{path} does not fit SAM 2 {name} at image size {image_size}: "
                               f"{str(exc)[:300]}. Is it the checkpoint of another SAM 2 size?") from exc
    return model.to(dev).eval()
