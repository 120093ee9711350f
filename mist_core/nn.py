"""Small network building blocks shared by densities and critics."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["mlp"]


def mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    """``Linear -> ReLU`` for each width in ``hidden``, then a ``Linear`` to ``out_features``."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)
