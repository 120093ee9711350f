"""What the training loop hands out (progress, checkpoint state) and takes back (resume)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Progress", "ResumeFrom", "TrainState"]


@dataclass(frozen=True)
class Progress:
    """What the training loop reports after every step (``split="train"``) and validation.

    ``mi`` holds the batch estimate (train) or the validation-set estimate per pair, in nats.
    """

    step: int
    epoch: int
    split: str
    loss: float
    mi: dict[str, float]
    total_steps: int | None
    samples: int
    elapsed_s: float


@dataclass(frozen=True)
class TrainState:
    """What a checkpoint needs, handed to ``train_mi_estimator(checkpoint=...)``.

    ``epoch`` counts completed epochs; ``batches_in_epoch`` the batches done in the next one
    (non-zero when training stopped mid-epoch). ``reason``: ``"epoch"``, ``"stopped"``,
    ``"early_stopped"`` or ``"finished"``.
    """

    estimator: nn.Module
    optimizer: torch.optim.Optimizer
    step: int
    epoch: int
    batches_in_epoch: int
    reason: str


@dataclass(frozen=True)
class ResumeFrom:
    """Where a resumed run starts: counters from a :class:`TrainState`, optimizer state."""

    step: int
    epoch: int
    batches_in_epoch: int = 0
    optimizer_state: dict | None = None
