"""Training batches of the loop: labelled episodes plus FixMatch episodes on pseudo-labelled images."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from ..augment import augment, cutmix, strong_photometric
from ..train import Task, TrainConfig, draw_supports, sample_batch
from .config import SemiConfig


@dataclasses.dataclass
class Unlabelled:
    """Unlabelled images at the working size, their supports in the bank and (per round) pseudo-labels."""

    names: list[str]
    images: torch.Tensor  # (N, 3, S, S) uint8
    support_nn: np.ndarray  # (N, n) bank rows, most similar first
    masks: torch.Tensor | None = None  # (N, 1, S, S) uint8 pseudo-labels
    confident: torch.Tensor | None = None  # (N, 1, S, S) uint8: 1 = the pixel counts

    def subset(self, rows: Sequence[int]) -> Unlabelled:
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return Unlabelled([self.names[i] for i in rows], self.images[idx], self.support_nn[list(rows)],
                          None if self.masks is None else self.masks[idx],
                          None if self.confident is None else self.confident[idx])


def semi_batch(bank: Task, unl: Unlabelled, cfg: SemiConfig, tcfg: TrainConfig, rng: np.random.Generator,
               size: int, teacher: torch.nn.Module | None = None):
    """Labelled episodes (as in fine-tuning) followed by FixMatch episodes on pseudo-labelled images; with a
    ``teacher`` the pseudo-label of each weak view is the teacher's prediction on it (confident pixels only)."""
    k = int(rng.integers(tcfg.k_min, tcfg.k_max + 1))
    q, qm, s, sm, _ = sample_batch({"bank": bank}, tcfg, rng, size, k=k, batch_size=cfg.labelled_batch)
    uq, weak_views, targets, keeps, us, usm = [], [], [], [], [], []
    for _ in range(cfg.unlabelled_batch):
        u = int(rng.integers(len(unl.names)))
        sup = torch.from_numpy(draw_supports(unl.support_nn[u], k, rng).astype(np.int64))
        image = unl.images[u:u + 1].float() / 255
        stored = torch.zeros(1, 2, size, size) if teacher is not None else \
            torch.cat([unl.masks[u:u + 1], unl.confident[u:u + 1]], 1).float()
        weak, target = augment(image, stored, rng, 1.0)  # geometry shared by the view and its label
        b_img, b_mask = augment(bank.train.images[sup].float() / 255, bank.train.masks[sup].float(), rng, 0.5)
        strong, keep = strong_photometric(weak, rng)
        weak_views.append(weak[0]), targets.append(target[0]), keeps.append(keep[0] * cfg.unlabelled_weight)
        uq.append(strong[0]), us.append(b_img), usm.append(b_mask)
    target = torch.stack(targets) if teacher is None else \
        teacher_target(teacher, torch.stack(weak_views), torch.stack(us), torch.stack(usm), cfg.confidence)
    labels = torch.cat([target[:, :1], target[:, 1:] * torch.stack(keeps)], 1)  # the mask, and where it counts
    strong, labels = cutmix(torch.stack(uq), labels, rng, cfg.cutmix)  # (the mixed-in pixels keep their labels)
    return (torch.cat([q, strong]), torch.cat([qm, labels[:, :1]]), torch.cat([s, torch.stack(us)]),
            torch.cat([sm, torch.stack(usm)]), torch.cat([torch.ones_like(qm), labels[:, 1:]]))


@torch.no_grad()
def teacher_target(teacher: torch.nn.Module, weak: torch.Tensor, supports: torch.Tensor, support_masks: torch.Tensor,
                   confidence: float) -> torch.Tensor:
    """(B, 2, S, S): the teacher's masks of the weak views and where it is confident (``max(p, 1 - p)``)."""
    dev = next(teacher.parameters()).device
    p = torch.sigmoid(teacher(weak.to(dev), supports.to(dev), support_masks.to(dev)).float()).cpu()
    return torch.cat([(p >= 0.5).float(), (torch.maximum(p, 1 - p) >= confidence).float()], 1)
