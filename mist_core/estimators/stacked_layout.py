"""Which DoE heads can be stacked, and the stacked parameters that hold their weights.

:func:`stackable` says when the fast path of :mod:`mist_core.estimators.stacked` applies:
every head a :class:`DoE` whose q(y|x) is one affine masked autoregressive layer
(``n_transforms=1``, D >= 2), the same widths everywhere, and marginals of one
architecture, each used with one target. Each kind of standardiser (the targets' in the
conditionals, the contexts', the marginals') must be an :class:`EMANorm` of the same
settings in every head (``normalization="emanorm"``, the seed's) or absent in every head
(``normalization=None``: the fast path treats it as the identity). Heads that mix the two,
some standardised and some not, take the plain loop.

:func:`weight_owners` lists, for each kind of weight, the module holding it in every head;
:class:`StackedParameters` turns each kind into one ``[n_heads, ...]`` parameter and makes
every head's tensor a buffer viewing its row, so optimisers see a handful of tensors while
state dicts keep the per-head layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from mist_core.distributions._zuko import MaskedLinear, MonotonicAffineTransform
from mist_core.distributions.flows import (
    ConditionalTransformedNormal,
    TransformedNormal,
    _MaskedAutoregressive,
)
from mist_core.distributions.normalization import EMANorm
from mist_core.estimators.generative import DoE

__all__ = ["StackedParameters", "stackable", "weight_owners"]

# -- which heads can be stacked ----------------------------------------------------------------


def _affine_made(made: nn.Module, conditional: bool) -> bool:
    return (
        isinstance(made, _MaskedAutoregressive)
        and (made.context_weight is not None) == conditional
        and made.univariate is MonotonicAffineTransform
        and made.total == 2
        and all(isinstance(m, MaskedLinear | nn.ReLU) for m in made.hyper)
        and len(_linears(made)) >= 2
    )


def _flow_layers(q: nn.Module, norm: nn.Module | None) -> list[nn.Module] | None:
    """The flow's layers after its standardiser (``[norm, *rest]``, or all when ``norm`` is
    None); None if ``norm`` is neither an :class:`EMANorm` in front nor absent."""
    layers = list(q.flow.transform.transforms)
    if norm is None:
        return layers
    if not isinstance(norm, EMANorm) or not layers or layers[0] is not norm:
        return None
    return layers[1:]


def _conditional_parts(
    head: nn.Module,
) -> tuple[EMANorm | None, EMANorm | None, _MaskedAutoregressive] | None:
    """(y standardiser, context standardiser, the MADE layer), or None if not stackable; a
    standardiser is None where the head has none (``normalization=None``)."""
    if not isinstance(head, DoE):
        return None
    q = head.q_Y_given_X
    if not isinstance(q, ConditionalTransformedNormal):
        return None
    context_norm = q.context_normalization
    if context_norm is not None and not isinstance(context_norm, EMANorm):
        return None
    layers = _flow_layers(q, q.normalization)
    if layers is None or len(layers) != 1 or not _affine_made(layers[0], True):
        return None
    return q.normalization, context_norm, layers[0]


def _marginal_parts(q: nn.Module) -> tuple[EMANorm | None, _MaskedAutoregressive] | None:
    """(standardiser or None, MADE) of a q(y) that can be stacked with others, or None."""
    if not isinstance(q, TransformedNormal):
        return None
    layers = _flow_layers(q, q.normalization)
    if layers is None or len(layers) != 1 or not _affine_made(layers[0], False):
        return None
    return q.normalization, layers[0]


def _linears(made: nn.Module) -> list[MaskedLinear]:
    return [m for m in made.hyper if isinstance(m, MaskedLinear)]


def _widths(made: nn.Module) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(m.weight.shape) for m in _linears(made))


def _same_settings(norms: Sequence[EMANorm | None]) -> bool:
    """Whether ``norms`` are all absent, or all :class:`EMANorm` of the same settings."""
    if all(n is None for n in norms):
        return True
    if any(n is None for n in norms):
        return False  # some heads standardised, some not
    first = norms[0]
    return all(
        (n.features, n.momentum, n.eps, n.min_scale_ratio)
        == (first.features, first.momentum, first.eps, first.min_scale_ratio)
        for n in norms
    )


def stackable(pairs: Sequence[tuple[str, str]], heads: Sequence[nn.Module]) -> bool:
    """Whether :class:`StackedHeads` can compute these heads (see the module docstring)."""
    if len(heads) < 2 or len(pairs) != len(heads):
        return False
    parts = [_conditional_parts(h) for h in heads]
    if not all(parts):
        return False
    if len({id(h.q_Y_given_X) for h in heads}) != len(heads):
        return False  # a conditional density shared by two heads: rows would alias
    if len({_widths(made) for _, _, made in parts}) != 1:  # type: ignore[misc]
        return False
    for head, (_, _, made) in zip(heads, parts, strict=True):  # type: ignore[misc]
        # the context feeds every first-layer unit (zuko's MADE does): one shared product
        if not bool(made.hyper[0].mask[:, head.q_Y_given_X.features :].all()):
            return False
    if not _same_settings([p[0] for p in parts]) or not _same_settings([p[1] for p in parts]):  # type: ignore[index]
        return False
    targets: dict[int, str] = {}
    for (_, y_key), head in zip(pairs, heads, strict=True):
        if targets.setdefault(id(head.q_Y), y_key) != y_key:
            return False  # one marginal used with two targets
    marginals = list({id(h.q_Y): h.q_Y for h in heads}.values())
    marginal_parts = [_marginal_parts(q) for q in marginals]
    if not all(marginal_parts):
        return False
    if len({_widths(made) for _, made in marginal_parts}) != 1:  # type: ignore[misc]
        return False
    return _same_settings([p[0] for p in marginal_parts])  # type: ignore[index]


# -- who owns the weights ---------------------------------------------------------------------


def _stack_order(pairs: Sequence[tuple[str, str]]) -> tuple[list[int], list[tuple[str, slice]]]:
    """Row ``r`` of every stack is head ``order[r]``: the heads of one representation are
    consecutive rows (``groups``: ``(x_key, rows)``), so their first layers are one matrix."""
    groups: dict[str, list[int]] = {}
    for index, (x_key, _) in enumerate(pairs):
        groups.setdefault(x_key, []).append(index)
    order = [i for indices in groups.values() for i in indices]
    slices, start = [], 0
    for x_key, indices in groups.items():
        slices.append((x_key, slice(start, start + len(indices))))
        start += len(indices)
    return order, slices


def _marginals_in_order(heads: Sequence[DoE], order: Sequence[int]) -> list[nn.Module]:
    """The distinct marginals q(y), in first-use order along the stack's rows."""
    return list({id(heads[i].q_Y): heads[i].q_Y for i in order}.values())


def weight_owners(pairs: Sequence[tuple[str, str]], heads: Sequence[DoE]) -> list:
    """``[(modules, name)]``: for each kind of weight, the module holding it in each row (in
    :func:`_stack_order`) and its attribute name, in the order :class:`_StackedDoE` takes
    them: the conditional layers' weights, their biases, the linear context path's weight
    and bias; then the marginals' weights and biases."""
    order, _ = _stack_order(pairs)
    made = [_conditional_parts(heads[i])[2] for i in order]  # type: ignore[index]
    marginals = [_marginal_parts(q)[1] for q in _marginals_in_order(heads, order)]  # type: ignore[index]
    layers = [_linears(m) for m in made]
    marginal_layers = [_linears(m) for m in marginals]
    owners = []
    for name in ("weight", "bias"):
        owners += [([ls[j] for ls in layers], name) for j in range(len(layers[0]))]
    owners += [(made, "context_weight"), (made, "context_bias")]
    for name in ("weight", "bias"):
        owners += [
            ([ls[j] for ls in marginal_layers], name) for j in range(len(marginal_layers[0]))
        ]
    return owners


class StackedParameters(nn.Module):
    """The stacked DoE heads' weights: one parameter per kind of weight, ``[n, ...]``.

    The heads keep their modules and the names of their tensors, but each of those tensors
    becomes a buffer that views its row here. Optimisers therefore see a handful of large
    tensors instead of one per head and layer (Adam and autograd pay per tensor), while
    state dicts, checkpoints and posterior maps keep the per-head layout: this module
    saves and loads nothing of its own, the heads' buffers carry the values.

    Train the heads through their :class:`MultiMIEstimator`: it routes gradients here, on
    its fast path and (through :meth:`differentiable`) on its plain loop.
    """

    def __init__(self, owners: list) -> None:
        super().__init__()
        self._owners = owners  # [(modules, name)]: plain references, not submodules
        for index, (modules, name) in enumerate(owners):
            tensors = [getattr(m, name) for m in modules]
            with torch.no_grad():
                stack = torch.stack([t.detach() for t in tensors])
            param = nn.Parameter(stack, requires_grad=tensors[0].requires_grad)
            self.register_parameter(f"role{index}", param)
            for row, module in enumerate(modules):
                del module._parameters[name]
                module.register_buffer(name, param.data[row])

    @property
    def roles(self) -> list[nn.Parameter]:
        return [getattr(self, f"role{i}") for i in range(len(self._owners))]

    def places(self) -> list[tuple[nn.Module, str]]:
        """Where the heads' tensors live: ``(module, buffer name)``, row after row."""
        return [(module, name) for modules, name in self._owners for module in modules]

    @torch.no_grad()
    def relink(self) -> None:
        """Make each head's buffer the view of its row again, taking its values: after a
        move (``.to()``), a deep copy, unpickling or ``load_state_dict(assign=True)``."""
        for param, (modules, name) in zip(self.roles, self._owners, strict=True):
            for row, module in enumerate(modules):
                view = param.data[row]
                buffer = module._buffers[name]
                if buffer.data_ptr() != view.data_ptr():
                    view.copy_(buffer)
                    module._buffers[name] = view

    @contextlib.contextmanager
    def differentiable(self) -> Iterator[None]:
        """While inside, the heads' tensors are differentiable views of the parameters, so
        evaluating a head on its own sends gradients here."""
        if not torch.is_grad_enabled():
            yield
            return
        saved = []
        for param, (modules, name) in zip(self.roles, self._owners, strict=True):
            for row, module in enumerate(modules):
                saved.append((module, name, module._buffers[name]))
                module._buffers[name] = param[row]
        try:
            yield
        finally:
            for module, name, buffer in saved:
                module._buffers[name] = buffer

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:  # noqa: ANN001
        pass  # the heads' buffers hold the values under their usual names

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        pass  # loaded through the heads' buffers, which view these parameters
