"""The command-line options of SAM 2, shared by the ``sam2`` proposer and the ``sam2`` refiner (one flag, one value)."""

from __future__ import annotations

from .registry import Option
from .sam2_configs import DEFAULT_SAM2, SAM2_CONFIGS

SAM2_MODEL = Option("--sam2-model", "model_name", DEFAULT_SAM2, "SAM 2 size, for --proposer sam2 and --refine sam2",
                    choices=tuple(SAM2_CONFIGS))
SAM2_IMAGE_SIZE = Option("--sam2-image-size", "image_size", 1024,
                         "SAM 2 input size; the official checkpoints are trained at 1024", type=int)
SAM2_WEIGHTS = tuple(SAM2_CONFIGS)
