"""The optimizers the training loop can use, by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "check_optimizer_name", "make_optimizer"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def check_optimizer_name(name: str) -> str:
    """``name`` when it is one of :data:`OPTIMIZERS`; otherwise a ``ValueError`` listing them."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    return name


def make_optimizer(
    name: str, params: Sequence[nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """The optimizer the training loop uses: ``"adam"``, ``"adamw"`` or ``"sgd"``.

    Adam and AdamW take their fused kernels (one pass over all the parameters instead of a
    loop of small ops per tensor) where torch has them: floating-point parameters on the
    CPU or a CUDA device. The update is the same algorithm; float rounding may differ.
    """
    check_optimizer_name(name)
    options: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    params = list(params)
    if name in ("adam", "adamw") and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    ):
        options["fused"] = True
    return OPTIMIZERS[name](params, **options)
