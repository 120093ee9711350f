"""Freezing a module: no gradients, and outputs that do not change during training."""

from __future__ import annotations

import types
from typing import TypeVar

from torch import nn

__all__ = ["freeze", "is_frozen"]

M = TypeVar("M", bound=nn.Module)


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    # A frozen module ignores train(): BatchNorm keeps its running statistics and dropout
    # stays off, even when a parent module is put in training mode.
    for module in self.modules():
        module.training = False
    return self


def freeze(module: M) -> M:
    """Freeze ``module`` in place and return it.

    Its parameters stop requiring gradients, it is put in eval mode, and later calls to
    ``train()`` (its own or a parent's) leave it in eval mode, so BatchNorm statistics and
    therefore its outputs stay fixed. Wrappers such as
    :class:`~mist_core.TransformedMIEstimator` run frozen modules without autograd.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"freeze() takes an nn.Module, got {type(module).__name__}")
    module.requires_grad_(False)
    for sub in module.modules():
        sub.train = types.MethodType(_stay_in_eval, sub)
    _stay_in_eval(module)
    module._mist_frozen = True
    return module


def is_frozen(module: nn.Module) -> bool:
    """Whether ``module`` was frozen with :func:`freeze`."""
    return bool(getattr(module, "_mist_frozen", False))
