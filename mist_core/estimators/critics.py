"""Critics for the discriminative estimators: ``critic(x, y) -> scores [N, N]``.

``scores[i, j] = f(x_i, y_j)``, every x of the batch against every y.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mist_core.nn import mlp

__all__ = ["CRITICS", "JointCritic", "SeparableCritic"]


class JointCritic(nn.Module):
    r"""An MLP on the concatenation :math:`f(x, y) = \mathrm{MLP}([x, y])`.

    The first layer is applied to ``x`` and ``y`` separately and summed by broadcasting
    (``W [x; y] = W_x x + W_y y``), so the ``N x N`` pairs cost ``N`` first-layer products
    each instead of ``N^2``; the result is the same function.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden_dims: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        if len(hidden_dims) == 0:
            raise ValueError("JointCritic needs at least one hidden layer in hidden_dims")
        first, *rest = hidden_dims
        self.x_in = nn.Linear(x_dim, first)
        self.y_in = nn.Linear(y_dim, first, bias=False)
        self.head = nn.Sequential(nn.ReLU(), mlp(first, rest, 1))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``x: [N, D_x]``, ``y: [M, D_y]`` -> ``[N, M]``."""
        hidden = self.x_in(x).unsqueeze(1) + self.y_in(y).unsqueeze(0)  # [N, M, H]
        return self.head(hidden).squeeze(-1)

    def pointwise(self, x: Tensor, y: Tensor) -> Tensor:
        """``f(x_i, y_i)`` for aligned ``x: [..., D_x]``, ``y: [..., D_y]`` -> ``[...]``."""
        return self.head(self.x_in(x) + self.y_in(y)).squeeze(-1)


class SeparableCritic(nn.Module):
    r"""An inner product of embeddings :math:`f(x, y) = g(x)^\top h(y)`."""

    def __init__(
        self,
        x_dim: int,
        y_dim: int,
        hidden_dims: Sequence[int] = (256, 256),
        embedding_dim: int = 128,
    ) -> None:
        super().__init__()
        self.g = mlp(x_dim, hidden_dims, embedding_dim)
        self.h = mlp(y_dim, hidden_dims, embedding_dim)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``x: [N, D_x]``, ``y: [M, D_y]`` -> ``[N, M]``."""
        return self.g(x) @ self.h(y).T

    def pointwise(self, x: Tensor, y: Tensor) -> Tensor:
        """``f(x_i, y_i)`` for aligned ``x: [..., D_x]``, ``y: [..., D_y]`` -> ``[...]``."""
        return (self.g(x) * self.h(y)).sum(-1)


CRITICS = {"joint": JointCritic, "separable": SeparableCritic}
