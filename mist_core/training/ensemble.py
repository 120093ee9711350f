"""A deep ensemble of one conditional density: :class:`DensityEnsemble`.

``K`` copies of a conditional density q(y|x), each from its own random initialisation, are
trained side by side in one vectorised call (:func:`torch.func.vmap` over their stacked
parameters) and read as their equal-weight mixture. Each copy is fitted on its own
objective, so the copies are independent fits of the same model; their mixture is a
density, and on held-out data it scores at least as well as its average copy (the log of a
mean is at least the mean of the logs), usually better: where one early-stopped fit
overfits or underfits, the others differ. ``estimate_mi``'s ``"auto"`` uses it for its
flow candidates of q(y|x) when ``AutoConfig.ensemble > 1`` (off by default: see that
field), and the held-out likelihood then weighs it against the other candidates as it
weighs any density.
"""

from __future__ import annotations

import copy
import math

from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

__all__ = ["DensityEnsemble"]


class _LogProb(nn.Module):
    """``forward(y, context) = density.log_prob(y, context)``: what ``vmap`` maps over."""

    def __init__(self, density: nn.Module) -> None:
        super().__init__()
        self.density = density

    def forward(self, y: Tensor, context: Tensor) -> Tensor:
        return self.density.log_prob(y, context)


class DensityEnsemble(nn.Module):
    """The equal-weight mixture of ``members``, copies of one conditional density
    architecture (same shapes, different initial weights).

    ``log_prob(y: [n, D], context: [n, C]) -> [n]``. In eval mode it is the mixture,
    ``log(mean_k q_k(y | x))``; in training mode it is the members' mean log-likelihood
    ``mean_k log q_k(y | x)``, so that maximising it fits every member on its own (their
    parameters are disjoint) rather than fitting them together as one mixture model.
    The members' parameters are stacked (``[K, ...]`` each) and held here; the members
    passed in are not trained.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        wrapped = [_LogProb(member) for member in members]
        params, buffers = stack_module_state(wrapped)
        self.size = len(members)
        self._param_names = list(params)
        self._buffer_names = list(buffers)
        self.stacked = nn.ParameterList(
            [nn.Parameter(params[name].detach().clone()) for name in self._param_names]
        )
        for index, name in enumerate(self._buffer_names):
            self.register_buffer(f"stacked_buffer_{index}", buffers[name].clone())
        # the architecture without weights, kept out of the module tree (no parameters)
        self.__dict__["_skeleton"] = copy.deepcopy(wrapped[0]).to("meta")

    def member_log_probs(self, y: Tensor, context: Tensor) -> Tensor:
        """Each member's ``log q_k(y | context)``: ``[K, n]``."""
        skeleton: nn.Module = self.__dict__["_skeleton"]
        skeleton.train(self.training)
        params = dict(zip(self._param_names, self.stacked, strict=True))
        buffers = {
            name: getattr(self, f"stacked_buffer_{index}")
            for index, name in enumerate(self._buffer_names)
        }

        def one(p: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
            return functional_call(skeleton, (p, b), (y, context))

        return vmap(one)(params, buffers)

    def log_prob(self, y: Tensor, context: Tensor) -> Tensor:
        """The mixture's ``log q(y | context)`` ``[n]`` (eval mode), or the members' mean
        log-likelihood (training mode)."""
        members = self.member_log_probs(y, context)
        if self.training:
            return members.mean(0)
        return members.logsumexp(0) - math.log(self.size)
