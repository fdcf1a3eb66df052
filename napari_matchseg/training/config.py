"""The settings of a training run (no torch import: the command line reads its defaults from here)."""

from __future__ import annotations

import dataclasses


def _default_model() -> dict:
    from ..modeling import MatchSegConfig

    return MatchSegConfig().to_dict()


@dataclasses.dataclass
class TrainConfig:
    data_root: str
    out_dir: str
    datasets: tuple[str, ...] = ("busi", "kvasir", "wbc")
    steps: int = 6000
    batch_size: int = 8
    k_min: int = 1
    k_max: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 150
    synthetic_fraction: float = 0.15
    neighbours: int = 16
    val_every: int = 500
    val_k: int = 8
    seed: int = 0
    retriever: str = "handcrafted"
    model: dict = dataclasses.field(default_factory=_default_model)
    init_checkpoint: str | None = None
    # overrides model["interaction"]; with init_checkpoint, None keeps the checkpoint's, and only a support-free
    # one ("none") can be given another (modeling.add_interaction: its U-Net weights kept, new paths at zero)
    interaction: str | None = None
    threads: int | None = None
    device: str = "auto"  # cuda, then mps, then cpu; bf16 autocast where the GPU supports it
    ema_decay: float = 0.99  # of the ``teacher`` given to train(), if any (mean teacher)
