"""Episodes turned into a head's input maps once, kept on disk, and replayed (for heads with ``maps``/``decode``).

The relational head's input (:meth:`RelationalHead.maps`) needs no weights but costs most of a training step (the
training-free scorers are fitted on every episode). So the first ``batches`` batches of the episode stream are
computed once into ``DIR/chunk-NNNN.pt`` files (written atomically; a run that stops keeps every finished chunk and
the next run computes only the rest), then training cycles over them with random flips and quarter turns, which
leave a map's meaning unchanged. ``DIR/meta.json`` records what the maps were made from; a cache made from other
settings is refused, never mixed in.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..fsutil import atomic_write_bytes

CHUNK = 25  # batches per file


class MapCache:
    def __init__(self, folder: Path, meta: dict, batches: int):
        self.folder = Path(folder)
        self.batches = batches
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_file = self.folder / "meta.json"
        if meta_file.is_file():
            known = json.loads(meta_file.read_text())
            if known != json.loads(json.dumps(meta)):  # as JSON keeps it (tuples become lists)
                raise ValueError(f"{self.folder} holds maps made from other settings ({known}); use another folder")
        else:
            atomic_write_bytes(meta_file, json.dumps(meta).encode())
        self._maps: torch.Tensor | None = None
        self._targets: torch.Tensor | None = None

    def _chunk(self, i: int) -> Path:
        return self.folder / f"chunk-{i:04d}.pt"

    @property
    def chunks(self) -> int:
        return -(-self.batches // CHUNK)

    def missing(self) -> list[int]:
        return [i for i in range(self.chunks) if not self._chunk(i).is_file()]

    def fill(self, episodes, head, minutes: float | None = None, log=print) -> bool:
        """Compute the missing chunks (episodes.batch(step) -> head.maps); True when all are there."""
        start = time.time()
        for i in self.missing():
            if minutes is not None and time.time() - start > 60 * minutes:
                return False
            maps, targets = [], []
            for step in range(i * CHUNK, min(self.batches, (i + 1) * CHUNK)):
                *inputs, target = episodes.batch(step)
                maps.append(head.maps(*inputs).half())
                targets.append(target.half())
            buffer = io.BytesIO()
            torch.save({"maps": torch.cat(maps), "targets": torch.cat(targets)}, buffer)
            atomic_write_bytes(self._chunk(i), buffer.getvalue())
            log(f"maps: chunk {i + 1} of {self.chunks} ({time.time() - start:.0f} s)")
        return True

    def load(self) -> None:
        parts = [torch.load(self._chunk(i), map_location="cpu", weights_only=True) for i in range(self.chunks)]
        self._maps = torch.cat([p["maps"] for p in parts])
        self._targets = torch.cat([p["targets"] for p in parts])

    def batch(self, step: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps, targets) of training step ``step``: a stored batch, flipped and turned by (seed, step)."""
        if self._maps is None:
            self.load()
        first = (step % (len(self._maps) // size)) * size
        maps, targets = self._maps[first:first + size].float(), self._targets[first:first + size].float()
        rng = np.random.default_rng([seed, step, 1])
        turns = int(rng.integers(4))
        maps, targets = (torch.rot90(t, turns, (2, 3)) for t in (maps, targets))
        if rng.random() < 0.5:
            maps, targets = (torch.flip(t, (3,)) for t in (maps, targets))
        return maps, targets


__all__ = ["MapCache", "CHUNK"]
