"""User settings that persist between sessions (last bank, retriever, proposer, k, device), as JSON.

Stored in ``$MATCHSEG_CONFIG_DIR/settings.json`` or the platform's user config folder; an unreadable file is
ignored (defaults are used) rather than breaking the plugin.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .fsutil import atomic_write_json


@dataclasses.dataclass
class Settings:
    bank: str = ""
    retriever: str = "handcrafted"
    proposer: str = "matchseg"
    k: int = 8
    device: str = "auto"
    threshold: float = 0.5
    refiner: str = "none"  # a name in refiners.REFINERS, or "none"
    mirror_tta: bool = False  # MatchSeg: average with the mirror image's probabilities
    checkpoint: str = ""  # empty = the shipped MatchSeg checkpoint
    export_format: str = "png-255"  # png-255 (0/255), png-labels (0/1), tif-255
    sam2_image_size: int = 1024
    propagation_proposer: str = "litemedsam"  # Propagate's model (propagation.PROPAGATION_PROPOSER)
    background_embedding: bool = True  # load LiteMedSAM and embed each shown image before it is clicked
    semi_rounds: int = 2  # "Learn from unlabelled": more than a finished run had are added to it

    @staticmethod
    def path() -> Path:
        env = os.environ.get("MATCHSEG_CONFIG_DIR")
        if env:
            return Path(env) / "settings.json"
        import platformdirs

        return Path(platformdirs.user_config_dir("napari-matchseg")) / "settings.json"

    @classmethod
    def load(cls) -> Settings:
        try:
            data = json.loads(cls.path().read_text())
        except (OSError, ValueError):
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return cls()

    def save(self) -> None:
        try:
            atomic_write_json(self.path(), dataclasses.asdict(self))
        except OSError:
            pass  # settings are a convenience; never fail the user's work over them
