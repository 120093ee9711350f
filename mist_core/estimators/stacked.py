"""Many DoE heads evaluated together: the fast path of :class:`MultiMIEstimator`.

The seed's model has one DoE per (representation, landmark): 15 heads, each a conditional
MADE on ``[landmark (D), representation (C = 512)]`` and a marginal shared by the heads of
a landmark. Evaluated one module at a time, that is 15 small networks, each paying Python
and dispatch overhead on tiny matrices, and 15 marginal evaluations for 5 marginals.

:class:`StackedHeads` evaluates them at once, with the same parameters and the same numbers:

- **One storage per role.** When built, it moves each kind of tensor of every head (the
  first layer's weights, the second's, the context standardisers' running means...) into
  one ``[n_heads, ...]`` tensor, and makes each head's own parameter or buffer a view of
  its row (``param.data = stacked[i]``). The heads keep their modules, names and state
  dicts, so checkpoints, posterior maps and the plain loop see nothing new; the fast path
  reads the stacked tensors with no copying, and :class:`_Views` sends their gradients
  back to the heads' parameters as views of one gradient buffer.
- **One matrix product per representation** for the first layers and linear context
  paths of all the heads reading it. Their context standardisers have seen the same
  batches, so they hold the same statistics and standardise once (if they differ, as for
  heads loaded from different runs, each head standardises on its own and the products
  are batched).
- The other layers of all the heads run as batched products (``torch.baddbmm``); the
  marginals too, each evaluated once and counted in the loss once per head using it,
  exactly as the plain loop counts it.
- The running statistics are updated with one reduction per batch tensor and one
  ``lerp_`` per role.

Anything that replaces a head's tensors (``.to(device)``, ``load_state_dict(assign=True)``,
a deep copy) leaves the stack stale: :meth:`StackedHeads.valid` notices and the owner
builds a new one. :func:`stackable` says when the fast path applies: every head a
:class:`DoE` whose q(y|x) is one affine masked autoregressive layer (``n_transforms=1``,
D >= 2) with EMA standardisers, the same widths everywhere, and marginals of one
architecture, each used with one target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mist_core.distributions._zuko import MaskedLinear, MonotonicAffineTransform
from mist_core.distributions.flows import (
    ConditionalTransformedNormal,
    TransformedNormal,
    _MaskedAutoregressive,
)
from mist_core.distributions.normalization import EMANorm
from mist_core.estimators.base import BatchTerms, mi_name
from mist_core.estimators.generative import DoE

__all__ = ["StackedHeads", "stackable"]

_LOG_2PI = math.log(2.0 * math.pi)


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


def _conditional_parts(head: nn.Module) -> tuple[EMANorm, EMANorm, _MaskedAutoregressive] | None:
    """(y standardiser, context standardiser, the MADE layer), or None if not stackable."""
    if not isinstance(head, DoE):
        return None
    q = head.q_Y_given_X
    if not isinstance(q, ConditionalTransformedNormal):
        return None
    if not isinstance(q.normalization, EMANorm) or not isinstance(
        q.context_normalization, EMANorm
    ):
        return None
    layers = list(q.flow.transform.transforms)
    if len(layers) != 2 or layers[0] is not q.normalization or not _affine_made(layers[1], True):
        return None
    return q.normalization, q.context_normalization, layers[1]


def _marginal_parts(q: nn.Module) -> tuple[EMANorm, _MaskedAutoregressive] | None:
    """(standardiser, MADE) of a q(y) that can be stacked with others, or None."""
    if not isinstance(q, TransformedNormal) or not isinstance(q.normalization, EMANorm):
        return None
    layers = list(q.flow.transform.transforms)
    if len(layers) != 2 or layers[0] is not q.normalization or not _affine_made(layers[1], False):
        return None
    return q.normalization, layers[1]


def _linears(made: nn.Module) -> list[MaskedLinear]:
    return [m for m in made.hyper if isinstance(m, MaskedLinear)]


def _widths(made: nn.Module) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(m.weight.shape) for m in _linears(made))


def _same_settings(norms: Sequence[EMANorm]) -> bool:
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
    for norm_y, _, made in parts:  # type: ignore[misc]
        # the context feeds every first-layer unit (zuko's MADE does): one shared product
        if not bool(made.hyper[0].mask[:, norm_y.features :].all()):
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


# -- gradients of stacked storage ------------------------------------------------------------


class _Views(torch.autograd.Function):
    """Views of a stacked storage ``[n, ...]`` whose rows are ``n`` parameters' memory.

    ``forward(stack, regions, *params)`` returns ``stack[region]`` for each region (no
    copy); the regions partition ``stack``. The backward pass writes the regions' gradients
    into one buffer and hands parameter ``i`` the view ``buffer[i]``, which autograd keeps
    as its ``.grad`` without copying.
    """

    @staticmethod
    def forward(ctx, stack: Tensor, regions: tuple, *params: Tensor) -> tuple[Tensor, ...]:  # noqa: ANN001
        ctx.regions = regions
        ctx.shape = stack.shape
        return tuple(stack[region] for region in regions)

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        if len(ctx.regions) == 1 and grads[0] is not None:
            buffer = grads[0].contiguous()
        else:
            reference = next(g for g in grads if g is not None)
            buffer = reference.new_empty(ctx.shape)
            for region, grad in zip(ctx.regions, grads, strict=True):
                if grad is None:
                    buffer[region].zero_()
                else:
                    buffer[region].copy_(grad)
        return (None, None, *buffer.unbind(0))


_WHOLE = (slice(None),)


class _Linear(torch.autograd.Function):
    """``x @ w.T + b`` for ``x: [B, C]``, ``w: [M, C]`` (any strides), ``b: [M]``.

    As ``torch.addmm``, but the weight's gradient comes out as ``[M, C]`` in row-major
    order whatever ``w``'s strides: autograd's own rule returns the transpose of a
    ``[C, M]`` product when ``w`` is a strided view (a group's first-layer columns are,
    rows ``D + C`` apart), and copying that into the stacked gradient is a slow transpose.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, w)
        return torch.addmm(b, x, w.t())

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        x, w = ctx.saved_tensors
        grad_x = grad @ w if ctx.needs_input_grad[0] else None
        grad_w = grad.t() @ x if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def _stack_rows(tensors: Sequence[Tensor]) -> Tensor:
    """One new ``[n, ...]`` tensor holding ``tensors``; each becomes a view of its row."""
    with torch.no_grad():
        stack = torch.stack([t.detach() for t in tensors])
    for i, tensor in enumerate(tensors):
        tensor.data = stack[i]
    return stack


@dataclass
class _Role:
    """One kind of parameter of every row: the stacked storage and the rows' parameters."""

    stack: Tensor
    params: tuple[nn.Parameter, ...]

    def views(self, *regions: tuple) -> tuple[Tensor, ...]:
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.params):
            return _Views.apply(self.stack, regions, *self.params)
        return tuple(self.stack[region] for region in regions)

    def whole(self) -> Tensor:
        return self.views(_WHOLE)[0]


@dataclass
class _Norms:
    """The running statistics of a set of :class:`EMANorm`, stacked ``[n, D]``."""

    norms: tuple[EMANorm, ...]
    mean: Tensor
    std: Tensor
    initialized: Tensor

    @classmethod
    def build(cls, norms: Sequence[EMANorm]) -> _Norms:
        return cls(
            tuple(norms),
            _stack_rows([n.mean for n in norms]),
            _stack_rows([n.std for n in norms]),
            _stack_rows([n.initialized for n in norms]),
        )

    def tensors(self) -> list[Tensor]:
        return [t for n in self.norms for t in (n.mean, n.std, n.initialized)]

    def observe(self, batch: Mapping[str, Tensor], keys: Sequence[str]) -> None:
        """Each norm ``i`` observes ``batch[keys[i]]``, as :meth:`EMANorm.observe` would."""
        if not any(n.training for n in self.norms):
            return
        tensors = [batch[k] for k in keys]
        fresh = [n.training and not n._seen(t) for n, t in zip(self.norms, tensors, strict=True)]
        if not any(fresh) or tensors[0].reshape(-1, self.mean.shape[-1]).shape[0] < 2:
            return
        moments: dict[str, tuple[Tensor, Tensor]] = {}
        for key in dict.fromkeys(keys):  # one two-pass reduction per batch tensor
            flat = batch[key].detach().reshape(-1, self.mean.shape[-1]).to(self.mean.dtype)
            mean = flat.mean(0)
            moments[key] = (mean, (flat - mean).square_().mean(0).sqrt_())
        momentum = self.norms[0].momentum
        with torch.no_grad():
            if all(fresh):
                means = torch.stack([moments[k][0] for k in keys])
                stds = torch.stack([moments[k][1] for k in keys])
                if bool(self.initialized.all()):
                    self.mean.lerp_(means, momentum)
                    self.std.lerp_(stds, momentum)
                    return
                if not bool(self.initialized.any()):
                    self.mean.copy_(means)
                    self.std.copy_(stds)
                    self.initialized.fill_(True)
                    return
            for norm, key, new in zip(self.norms, keys, fresh, strict=True):
                if new:
                    norm._update(*moments[key])

    def scale(self) -> Tensor:
        """``[n, D]``: :meth:`EMANorm.scale` of every row."""
        first = self.norms[0]
        floor = first.min_scale_ratio * self.std.mean(-1, keepdim=True)
        return self.std.clamp_min(floor) + first.eps

    def rows_equal(self, rows: slice) -> bool:
        """Whether the norms ``rows`` hold the same statistics."""
        mean, std = self.mean[rows], self.std[rows]
        return bool(((mean == mean[:1]).all() & (std == std[:1]).all()))


def _masks(layers: Sequence[MaskedLinear]) -> Tensor:
    return torch.stack([m.mask.to(m.weight.dtype) for m in layers])


# -- the stacked heads -----------------------------------------------------------------------


class StackedHeads:
    """The DoE heads of a :class:`MultiMIEstimator` as stacked tensors (module docstring).

    Built from ``pairs[i] = (x_key, y_key)`` and ``heads[i]`` (which :func:`stackable`
    accepts); the heads' parameters and buffers become views of the stacked storage.
    Not an ``nn.Module``: it owns nothing the heads do not already hold.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], heads: Sequence[DoE]) -> None:
        with torch.inference_mode(False), torch.no_grad():
            self._build(list(pairs), list(heads))

    def _build(self, pairs: list[tuple[str, str]], heads: list[DoE]) -> None:
        groups: dict[str, list[int]] = {}
        for index, (x_key, _) in enumerate(pairs):
            groups.setdefault(x_key, []).append(index)
        #: row r of every stack is head ``order[r]``; the heads of one representation are
        #: consecutive rows (``groups``), so their first layers are one matrix
        order = [i for indices in groups.values() for i in indices]
        row_of = {i: row for row, i in enumerate(order)}
        #: ``(name, row)`` of each head in the caller's order
        self.outputs = [(mi_name(*pair), row_of[i]) for i, pair in enumerate(pairs)]
        self.groups: list[tuple[str, slice]] = []
        start = 0
        for x_key, indices in groups.items():
            self.groups.append((x_key, slice(start, start + len(indices))))
            start += len(indices)
        self.y_keys = [pairs[i][1] for i in order]
        parts = [_conditional_parts(heads[i]) for i in order]
        made = [p[2] for p in parts]  # type: ignore[index]
        self.d = parts[0][0].features  # type: ignore[index]
        linears = [_linears(m) for m in made]
        self.hidden = linears[0][0].weight.shape[0]
        self.layers = [
            _Role(_stack_rows([ls[j].weight for ls in linears]),
                  tuple(ls[j].weight for ls in linears))
            for j in range(len(linears[0]))
        ]  # fmt: skip
        self.biases = [
            _Role(_stack_rows([ls[j].bias for ls in linears]), tuple(ls[j].bias for ls in linears))
            for j in range(len(linears[0]))
        ]
        self.context_weight = _Role(
            _stack_rows([m.context_weight for m in made]), tuple(m.context_weight for m in made)
        )
        self.context_bias = _Role(
            _stack_rows([m.context_bias for m in made]), tuple(m.context_bias for m in made)
        )
        self.masks = [_masks([ls[j] for ls in linears]) for j in range(len(linears[0]))]
        self.masks[0] = self.masks[0][:, :, : self.d]  # the context columns are all ones
        self.y_norms = _Norms.build([p[0] for p in parts])  # type: ignore[index]
        self.context_norms = _Norms.build([p[1] for p in parts])  # type: ignore[index]

        # marginals: one row each, in first-use order; row of each head's marginal
        marginal_rows: dict[int, int] = {}
        marginals: list[nn.Module] = []
        self.marginal_keys: list[str] = []
        for i in order:
            q = heads[i].q_Y
            if id(q) not in marginal_rows:
                marginal_rows[id(q)] = len(marginals)
                marginals.append(q)
                self.marginal_keys.append(pairs[i][1])
        self.marginal_of_row = torch.tensor([marginal_rows[id(heads[i].q_Y)] for i in order])
        self.marginal_uses = torch.bincount(self.marginal_of_row, minlength=len(marginals))
        marginal_parts = [_marginal_parts(q) for q in marginals]
        marginal_linears = [_linears(p[1]) for p in marginal_parts]  # type: ignore[index]
        n_layers = len(marginal_linears[0])
        self.marginal_layers = [
            _Role(_stack_rows([ls[j].weight for ls in marginal_linears]),
                  tuple(ls[j].weight for ls in marginal_linears))
            for j in range(n_layers)
        ]  # fmt: skip
        self.marginal_biases = [
            _Role(_stack_rows([ls[j].bias for ls in marginal_linears]),
                  tuple(ls[j].bias for ls in marginal_linears))
            for j in range(n_layers)
        ]  # fmt: skip
        self.marginal_masks = [_masks([ls[j] for ls in marginal_linears]) for j in range(n_layers)]
        self.marginal_norms = _Norms.build([p[0] for p in marginal_parts])  # type: ignore[index]

        roles = [*self.layers, *self.biases, self.context_weight, self.context_bias,
                 *self.marginal_layers, *self.marginal_biases]  # fmt: skip
        self._tensors = [p for role in roles for p in role.params] + [
            t for norms in (self.y_norms, self.context_norms, self.marginal_norms)
            for t in norms.tensors()
        ]  # fmt: skip
        self._pointers = [t.data_ptr() for t in self._tensors]
        self._modules = [heads[i] for i in order]

    def valid(self, heads: Sequence[nn.Module]) -> bool:
        """Whether every head's tensors are still the views this stack made (nothing moved
        them to another device or replaced them) and the heads are the same modules."""
        return (
            len(heads) == len(self._modules)
            and set(map(id, heads)) == set(map(id, self._modules))
            and [t.data_ptr() for t in self._tensors] == self._pointers
        )

    def __deepcopy__(self, memo: dict) -> None:
        return None  # a copy's heads own new tensors: its owner builds a new stack

    def __reduce__(self) -> tuple:
        return (type(None), ())

    # -- evaluation --------------------------------------------------------------------------

    def batch_terms(self, batch: Mapping[str, Tensor]) -> BatchTerms:
        """The heads' :class:`BatchTerms`: the same numbers as evaluating each on its own."""
        d, hidden = self.d, self.hidden
        self.context_norms.observe(batch, [x for x, rows in self.groups
                                           for _ in range(rows.stop - rows.start)])  # fmt: skip
        self.y_norms.observe(batch, self.y_keys)

        # 1. first layer (context columns) and linear context path: one product per
        #    representation
        w1 = self.layers[0]
        regions = [(rows, slice(None), slice(d, None)) for _, rows in self.groups]
        *w1_context, w1_y = w1.views(*regions, (slice(None), slice(None), slice(None, d)))
        b1 = self.biases[0].views(*[(rows,) for _, rows in self.groups])
        wc = self.context_weight.views(*[(rows,) for _, rows in self.groups])
        bc = self.context_bias.views(*[(rows,) for _, rows in self.groups])
        context_scale = self.context_norms.scale()
        first, linear = [], []
        for g, (x_key, rows) in enumerate(self.groups):
            k = rows.stop - rows.start
            x = batch[x_key]
            w = w1_context[g]  # [k, H, C], rows strided by D + C: no copy
            if self.context_norms.rows_equal(rows):
                x_std = (x - self.context_norms.mean[rows.start]) / context_scale[rows.start]
                h = _Linear.apply(x_std, w.flatten(0, 1), b1[g].flatten())  # [B, k H]
                c = _Linear.apply(x_std, wc[g].flatten(0, 1), bc[g].flatten())  # [B, k 2D]
                first.append(h.unflatten(-1, (k, hidden)).transpose(0, 1))
                linear.append(c.unflatten(-1, (k, 2 * d)).transpose(0, 1))
            else:  # each head standardises with its own statistics (heads from other runs)
                x_std = (x - self.context_norms.mean[rows, None]) / context_scale[rows, None]
                first.append(torch.baddbmm(b1[g].unsqueeze(1), x_std, w.transpose(1, 2)))
                linear.append(torch.baddbmm(bc[g].unsqueeze(1), x_std, wc[g].transpose(1, 2)))

        # 2. the y part of the first layer, then the other layers, batched over heads
        y_scale = self.y_norms.scale()
        y = torch.stack([batch[k] for k in self.y_keys])  # [n, B, D]
        y_std = (y - self.y_norms.mean.unsqueeze(1)) / y_scale.unsqueeze(1)
        phi = torch.cat(first) if len(first) > 1 else first[0]  # [n, B, H]
        phi = torch.baddbmm(phi, y_std, (self.masks[0] * w1_y).transpose(1, 2)).relu_()
        phi = self._layers(phi, self.layers[1:], self.biases[1:], self.masks[1:])
        phi = phi + (torch.cat(linear) if len(linear) > 1 else linear[0])
        log_q = _affine_log_prob(phi, y_std, -y_scale.log().sum(-1))  # [n, B]

        # 3. the marginals, one row each
        self.marginal_norms.observe(batch, self.marginal_keys)
        m_scale = self.marginal_norms.scale()
        y_m = torch.stack([batch[k] for k in self.marginal_keys])
        y_m_std = (y_m - self.marginal_norms.mean.unsqueeze(1)) / m_scale.unsqueeze(1)
        phi_m = self._layers(y_m_std, self.marginal_layers, self.marginal_biases,
                             self.marginal_masks)  # fmt: skip
        log_q_y = _affine_log_prob(phi_m, y_m_std, -m_scale.log().sum(-1))  # [m, B]

        uses = self.marginal_uses.to(log_q_y.dtype)
        loss = -log_q.mean(1).sum() - (log_q_y.mean(1) * uses.to(log_q_y.device)).sum()
        ratios = (log_q - log_q_y[self.marginal_of_row.to(log_q_y.device)]).unbind(0)
        return BatchTerms(loss=loss, log_ratios={name: ratios[row] for name, row in self.outputs})

    @staticmethod
    def _layers(
        phi: Tensor, layers: Sequence[_Role], biases: Sequence[_Role], masks: Sequence[Tensor]
    ) -> Tensor:
        """``phi: [n, B, in]`` through the stacked layers (masked), ReLU between."""
        for j, (weight, bias, mask) in enumerate(zip(layers, biases, masks, strict=True)):
            w = (mask * weight.whole()).transpose(1, 2)
            phi = torch.baddbmm(bias.whole().unsqueeze(1), phi, w)
            if j < len(layers) - 1:
                phi = phi.relu_()
        return phi


def _affine_log_prob(phi: Tensor, y_std: Tensor, log_det0: Tensor) -> Tensor:
    """log q(y) of a one-layer affine MADE flow from its parameters ``phi: [n, B, 2D]``,
    the standardised ``y_std: [n, B, D]`` and the standardisers' log-determinants ``[n]``."""
    d = y_std.shape[-1]
    phi = phi.unflatten(-1, (d, 2))
    affine = MonotonicAffineTransform(phi[..., 0], phi[..., 1])
    z = affine(y_std)
    return (
        -0.5 * (z * z).sum(-1)
        - 0.5 * d * _LOG_2PI
        + affine.log_scale.sum(-1)
        + log_det0.unsqueeze(-1)
    )  # [n, B]
