"""Many DoE heads evaluated together: the fast path of :class:`MultiMIEstimator`.

The seed's model has one DoE per (representation, landmark): 15 heads, each a conditional
MADE on ``[landmark (D), representation (C = 512)]`` and a marginal shared by the heads of
a landmark. Evaluated one module at a time, that is 15 small networks, each paying Python
and dispatch overhead on tiny matrices, and 15 marginal evaluations for 5 marginals.

:class:`StackedHeads` evaluates them at once, with the same parameters and the same numbers:

- **One parameter per kind of weight.** :class:`StackedParameters` holds each kind of
  weight of every head (the first layer's weights, the second's, ... the marginals') as
  one ``[n_heads, ...]`` parameter, and each head's own tensor becomes a buffer that views
  its row. The heads keep their modules and tensor names, so state dicts, checkpoints and
  posterior maps keep the per-head layout; optimisers see 12 tensors instead of 140 (Adam
  and autograd pay per tensor). The EMA standardisers' running statistics are stacked the
  same way (their buffers view rows of one tensor per role).
- **A hand-written backward pass** (:class:`_StackedDoE`): each stacked gradient is
  computed once into one buffer, and each head's parameter gets the view of its row as
  its ``.grad`` (autograd would record ~300 small operations a step). It covers the
  densities' parameters and the representations (a trained encoder's features); a batch
  whose targets need gradients takes the plain loop.
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
- **Heads without standardisers** (built with ``normalization=None``) stack too: an
  absent standardiser (of the targets, the contexts or the marginals) is the identity,
  mean 0 and scale 1, with no running statistics and no log-determinant (:class:`_NoNorms`);
  the representations enter the products as they are. Each kind must be present in every
  head or in none: heads that mix the two take the plain loop.

Anything that replaces a head's tensors (``.to(device)``, ``load_state_dict(assign=True)``,
a deep copy, unpickling) leaves them apart from the stacks: :meth:`StackedHeads.valid`
notices, :meth:`StackedParameters.relink` takes their values back into the parameters, and
the owner builds a new :class:`StackedHeads`. Train the heads through their
:class:`MultiMIEstimator` (its plain loop, too, sends gradients to the stacked parameters):
a head trained on its own, outside it, would not move them.

:func:`~mist_core.estimators.stacked_layout.stackable` says when the fast path applies;
:mod:`mist_core.estimators.stacked_layout` also holds :class:`StackedParameters`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mist_core.distributions._zuko import MaskedLinear, MonotonicAffineTransform
from mist_core.distributions.normalization import EMANorm, _mean_std
from mist_core.estimators.base import BatchTerms, mi_name
from mist_core.estimators.generative import DoE
from mist_core.estimators.stacked_layout import (
    StackedParameters,
    _conditional_parts,
    _linears,
    _marginal_parts,
    _marginals_in_order,
    _stack_order,
)

__all__ = ["StackedHeads"]

_LOG_2PI = math.log(2.0 * math.pi)


# -- stacked storage ---------------------------------------------------------------------


def _stack_rows(tensors: Sequence[Tensor]) -> Tensor:
    """One new ``[n, ...]`` tensor holding ``tensors``; each becomes a view of its row."""
    with torch.no_grad():
        stack = torch.stack([t.detach() for t in tensors])
    for i, tensor in enumerate(tensors):
        tensor.data = stack[i]
    return stack


@dataclass
class _Role:
    """One kind of weight of every row: its stacked parameter ``[n, ...]`` (owned by
    :class:`StackedParameters`)."""

    param: nn.Parameter

    @property
    def stack(self) -> Tensor:
        return self.param.data


@dataclass
class _Norms:
    """The running statistics of a set of :class:`EMANorm`, stacked ``[n, D]``."""

    norms: tuple[EMANorm, ...]
    mean: Tensor
    std: Tensor
    initialized: Tensor
    identity = False  # (a class attribute, not a field: see :class:`_NoNorms`)

    @classmethod
    def build(cls, norms: Sequence[EMANorm]) -> _Norms:
        return cls(
            tuple(norms),
            _stack_rows([n.mean for n in norms]),
            _stack_rows([n.std for n in norms]),
            _stack_rows([n.initialized for n in norms]),
        )

    def places(self) -> list[tuple[nn.Module, str]]:
        """Where the stacked buffers live: ``(norm, buffer name)``."""
        return [(n, name) for n in self.norms for name in ("mean", "std", "initialized")]

    def observe(
        self,
        batch: Mapping[str, Tensor],
        keys: Sequence[str],
        moments: dict[str, tuple[Tensor, Tensor]],
    ) -> None:
        """Norm ``i`` observes ``batch[keys[i]]``, as :meth:`EMANorm.observe` would.
        ``moments`` caches each batch tensor's (mean, std) across calls of one step."""
        if not any(n.training for n in self.norms):
            return
        tensors = [batch[k] for k in keys]
        fresh = [n.training and not n._seen(t) for n, t in zip(self.norms, tensors, strict=True)]
        if not any(fresh) or tensors[0].reshape(-1, self.mean.shape[-1]).shape[0] < 2:
            return
        _moments(batch, [k for k in dict.fromkeys(keys) if k not in moments], moments,
                 self.mean.shape[-1], self.mean.dtype)  # fmt: skip
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
        return bool((mean == mean[:1]).all() & (std == std[:1]).all())


class _NoNorms:
    """Absent standardisers (``normalization=None``) of ``n`` rows, as :class:`_Norms`: the
    identity, mean 0 and scale 1 ``[n, D]``, no running statistics to update, and so no
    log-determinant (``-log 1 = 0``)."""

    identity = True

    def __init__(self, n: int, features: int, like: Tensor) -> None:
        self.mean = like.new_zeros(n, features)
        self.std = like.new_ones(n, features)

    def places(self) -> list[tuple[nn.Module, str]]:
        return []  # no buffers: nothing can be moved or replaced

    def observe(self, *args: object) -> None:
        pass  # nothing to observe

    def scale(self) -> Tensor:
        return self.std

    def rows_equal(self, rows: slice) -> bool:
        return True


def _norms(norms: Sequence[EMANorm | None], features: int, like: Tensor) -> _Norms | _NoNorms:
    """The stacked standardisers of one kind: every row's :class:`EMANorm`, or none in any
    row (:func:`~mist_core.estimators.stacked_layout.stackable` allows no mix)."""
    if norms[0] is None:
        return _NoNorms(len(norms), features, like)
    return _Norms.build(norms)  # type: ignore[arg-type]


def _moments(
    batch: Mapping[str, Tensor],
    keys: Sequence[str],
    out: dict[str, tuple[Tensor, Tensor]],
    features: int,
    dtype: torch.dtype,
) -> None:
    """``out[key] = (mean, std)`` ``[D]`` of each ``batch[key]``, by the two-pass
    reduction :meth:`EMANorm.observe` uses (``std`` is the biased one). Small targets
    (D <= 16, as landmarks) are reduced together."""
    if not keys:
        return
    flats = [batch[k].detach().reshape(-1, features).to(dtype) for k in keys]
    if features <= 16 and len({f.shape for f in flats}) == 1:
        mean, std = _mean_std(torch.stack(flats), dim=1)  # [K, N, D] -> [K, D]
        out.update(zip(keys, zip(mean.unbind(0), std.unbind(0), strict=True), strict=True))
        return
    for key, flat in zip(keys, flats, strict=True):
        out[key] = _mean_std(flat)


def _masks(layers: Sequence[MaskedLinear]) -> Tensor:
    return torch.stack([m.mask.to(m.weight.dtype) for m in layers])


# -- the stacked heads -----------------------------------------------------------------------


class StackedHeads:
    """The DoE heads of a :class:`MultiMIEstimator` as stacked tensors (module docstring).

    Built from ``pairs[i] = (x_key, y_key)``, ``heads[i]`` (which :func:`stackable`
    accepts) and their :class:`StackedParameters`; the EMA standardisers' buffers become
    views of stacked storage (absent standardisers, ``normalization=None``, are the
    identity: :class:`_NoNorms`). Not an ``nn.Module``: it owns no parameters.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        heads: Sequence[DoE],
        weights: StackedParameters,
    ) -> None:
        with torch.inference_mode(False), torch.no_grad():
            self._build(list(pairs), list(heads), weights)

    def _build(
        self, pairs: list[tuple[str, str]], heads: list[DoE], weights: StackedParameters
    ) -> None:
        order, self.groups = _stack_order(pairs)
        row_of = {i: row for row, i in enumerate(order)}
        #: ``(name, row)`` of each head in the caller's order
        self.outputs = [(mi_name(*pair), row_of[i]) for i, pair in enumerate(pairs)]
        self.context_keys = [pairs[i][0] for i in order]
        self.y_keys = [pairs[i][1] for i in order]
        parts = [_conditional_parts(heads[i]) for i in order]
        made = [p[2] for p in parts]  # type: ignore[index]
        q = heads[order[0]].q_Y_given_X
        self.d, context_features = q.features, q.context_features
        like = weights.roles[0].data  # the device and dtype of the absent standardisers
        linears = [_linears(m) for m in made]
        n_layers = len(linears[0])
        self.hidden = linears[0][0].weight.shape[0]
        roles = [_Role(p) for p in weights.roles]
        self.layers, roles = roles[:n_layers], roles[n_layers:]
        self.biases, roles = roles[:n_layers], roles[n_layers:]
        (self.context_weight, self.context_bias), roles = roles[:2], roles[2:]
        self.masks = [_masks([ls[j] for ls in linears]) for j in range(n_layers)]
        self.masks[0] = self.masks[0][:, :, : self.d]  # the context columns are all ones
        self.y_norms = _norms([p[0] for p in parts], self.d, like)  # type: ignore[index]
        self.context_norms = _norms([p[1] for p in parts], context_features, like)  # type: ignore[index]

        # marginals: one row each, in first-use order; row of each head's marginal
        marginals = _marginals_in_order(heads, order)
        marginal_rows = {id(q): row for row, q in enumerate(marginals)}
        self.marginal_keys = [
            next(pairs[i][1] for i in order if heads[i].q_Y is q) for q in marginals
        ]
        device = weights.roles[0].device
        self.marginal_of_row = torch.tensor(
            [marginal_rows[id(heads[i].q_Y)] for i in order], device=device
        )
        #: how many heads count each marginal in the loss (the plain loop counts it per head)
        self.marginal_uses = torch.bincount(self.marginal_of_row, minlength=len(marginals))
        marginal_parts = [_marginal_parts(q) for q in marginals]
        marginal_linears = [_linears(p[1]) for p in marginal_parts]  # type: ignore[index]
        m_layers = len(marginal_linears[0])
        self.marginal_layers, self.marginal_biases = roles[:m_layers], roles[m_layers:]
        self.marginal_masks = [_masks([ls[j] for ls in marginal_linears]) for j in range(m_layers)]
        self.marginal_norms = _norms([p[0] for p in marginal_parts], self.d, like)  # type: ignore[index]

        #: the stacked parameters, in the order :class:`_StackedDoE` takes them
        self.params = weights.roles
        #: the heads' tensors that view stacked storage, by where they live: a load with
        #: assign=True or a copy puts new tensors there, which the pointers then show
        self._places = weights.places() + [
            place for norms in (self.y_norms, self.context_norms, self.marginal_norms)
            for place in norms.places()
        ]  # fmt: skip
        self._pointers = self._current_pointers()
        self._modules = [heads[i] for i in order]

    def _current_pointers(self) -> list[int]:
        return [p.data_ptr() for p in self.params] + [
            module._buffers[name].data_ptr() for module, name in self._places
        ]

    def valid(self, heads: Sequence[nn.Module]) -> bool:
        """Whether the stacked parameters and every head's tensors are still where this
        stack found them (nothing moved them to another device, copied or replaced them)
        and the heads are the same modules."""
        return (
            len(heads) == len(self._modules)
            and set(map(id, heads)) == set(map(id, self._modules))
            and self._current_pointers() == self._pointers
        )

    def __deepcopy__(self, memo: dict) -> None:
        return None  # a copy's heads own new tensors: its owner builds a new stack

    def __reduce__(self) -> tuple:
        return (type(None), ())

    # -- evaluation --------------------------------------------------------------------------

    def applies(self, batch: Mapping[str, Tensor]) -> bool:
        """Whether :meth:`batch_terms` computes this batch: its gradients are written by hand
        for the densities' parameters and the representations, not for the targets."""
        return not any(batch[k].requires_grad for k in self.marginal_keys)

    def batch_terms(self, batch: Mapping[str, Tensor]) -> BatchTerms:
        """The heads' :class:`BatchTerms`: the same numbers as evaluating each on its own."""
        moments: dict[str, tuple[Tensor, Tensor]] = {}  # one reduction per batch tensor
        self.context_norms.observe(batch, self.context_keys, moments)
        self.y_norms.observe(batch, self.y_keys, moments)
        self.marginal_norms.observe(batch, self.marginal_keys, moments)
        xs = [batch[x_key] for x_key, _ in self.groups]
        loss, ratios = _StackedDoE.apply(self, batch, *xs, *self.params)
        rows = ratios.unbind(0)
        return BatchTerms(loss=loss, log_ratios={name: rows[row] for name, row in self.outputs})


# -- the heads' forward and backward passes ---------------------------------------------------

#: zuko's MonotonicAffineTransform bounds the log-scale: ls = s / (1 + |s| / L) with
#: L = -log(slope), its default slope (1e-3 in zuko 1.6), read from its signature
_SLOPE_BOUND = -math.log(
    inspect.signature(MonotonicAffineTransform.__init__).parameters["slope"].default
)


def _affine(phi: Tensor, y_std: Tensor, log_det0: Tensor) -> tuple[Tensor, ...]:
    """log q(y) ``[n, B]`` of a one-layer affine MADE flow from its parameters
    ``phi: [n, B, 2D]`` (shift and unbounded log-scale interleaved, as zuko unpacks them),
    the standardised ``y_std: [n, B, D]`` and the standardisers' log-determinants ``[n]``;
    with what the backward pass needs."""
    d = y_std.shape[-1]
    shift, s = phi[..., 0::2], phi[..., 1::2]
    den = s.abs().div_(_SLOPE_BOUND).add_(1.0)
    log_scale = s / den
    scale = log_scale.exp()
    z = torch.addcmul(shift, y_std, scale)
    log_q = (
        (z * z).sum(-1).mul_(-0.5)
        .add_(log_scale.sum(-1))
        .add_(log_det0.unsqueeze(-1) - 0.5 * d * _LOG_2PI)
    )  # fmt: skip
    return log_q, z, scale, den


def _affine_backward(grad: Tensor, y_std: Tensor, z: Tensor, scale: Tensor, den: Tensor) -> Tensor:
    """d loss / d phi ``[n, B, 2D]`` from d loss / d log q ``grad: [n, B]``."""
    g = grad.unsqueeze(-1)
    d_shift = -g * z  # d log q / d z = -z
    d_log_scale = torch.addcmul(g.expand_as(z), d_shift * y_std, scale)
    d_s = d_log_scale / (den * den)  # d (s / (1 + |s| / L)) / d s = 1 / (1 + |s| / L)^2
    return torch.stack([d_shift, d_s], -1).flatten(-2)


def _hidden_forward(
    a: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]
) -> tuple[list[Tensor], Tensor]:
    """``a: [n, B, in]`` through masked ``weights [n, out, in]`` with ReLU between: the
    input of each layer (what the backward pass needs) and the last layer's output."""
    inputs = []
    for j, (w, b) in enumerate(zip(weights, biases, strict=True)):
        inputs.append(a)
        out = torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2))
        a = out.relu() if j < len(weights) - 1 else out
    return inputs, out


def _relu_backward(grad: Tensor, output: Tensor) -> Tensor:
    """``grad`` where the ReLU's ``output`` is positive, else 0: one pass, no mask."""
    return torch.ops.aten.threshold_backward(grad, output, 0)


def _hidden_backward(
    grad: Tensor, inputs: Sequence[Tensor], weights: Sequence[Tensor], masks: Sequence[Tensor],
    input_grad: bool,
) -> tuple[list[Tensor], list[Tensor], Tensor | None]:  # fmt: skip
    """Weight and bias gradients of :func:`_hidden_forward` from d loss / d its output
    ``grad``; and d loss / d its input when ``input_grad``."""
    d_weights, d_biases = [], []
    for j in range(len(weights) - 1, -1, -1):
        d_weights.append(torch.bmm(grad.transpose(1, 2), inputs[j]).mul_(masks[j]))
        d_biases.append(grad.sum(1))
        if j > 0:  # through the ReLU whose output is inputs[j] (a boolean mask is slower)
            grad = _relu_backward(torch.bmm(grad, weights[j]), inputs[j])
        elif input_grad:
            grad = torch.bmm(grad, weights[0])
    return d_weights[::-1], d_biases[::-1], grad if input_grad else None


def _context(
    norms: _Norms | _NoNorms, scale: Tensor, x: Tensor, rows: slice
) -> tuple[Tensor, Tensor | None]:
    """The representation ``x: [B, C]`` standardised for the heads ``rows``: ``[B, C]``
    once when their standardisers hold the same statistics, ``x`` itself when there are
    none, else ``[k, B, C]`` per head; and the scale it was divided by (None: none)."""
    if norms.identity:
        return x, None
    if norms.rows_equal(rows):
        # subtract first: x * (1 / scale) - mean / scale cancels digits for raw features
        # far from zero (means near 1,000 lost 3 digits of the gradient)
        return (x - norms.mean[rows.start]) / scale[rows.start], scale[rows.start]
    return (x - norms.mean[rows, None]) / scale[rows, None], scale[rows, None]


class _StackedDoE(torch.autograd.Function):
    """log q(y | x) ``[n, B]`` and log q(y) ``[m, B]`` of every head and marginal, with a
    hand-written backward pass: autograd would record ~300 small operations a step and copy
    each stacked gradient into place; here each gradient is computed once, into one buffer
    per role, and parameter ``i`` gets the view ``buffer[i]`` as its ``.grad``.

    ``apply(stack, batch, *xs, *params)``: ``xs`` the representations of ``stack.groups``
    (their gradients are returned when they need them: a trained encoder's features),
    ``params`` every head's parameters in ``stack.params`` order (inputs only so that
    autograd routes their gradients; the values are read from the stacked storage).
    """

    @staticmethod
    def forward(ctx, stack: StackedHeads, batch: Mapping[str, Tensor], *inputs: Tensor):  # noqa: ANN001, ANN205
        d, hidden = stack.d, stack.hidden
        n_groups = len(stack.groups)
        w1 = stack.layers[0].stack
        b1 = stack.biases[0].stack
        w_context, b_context = stack.context_weight.stack, stack.context_bias.stack

        # first layer (context columns) and linear context path: one product per
        # representation, on x standardised once (per head when the statistics differ; not
        # at all for heads without context standardisers)
        context_scale = stack.context_norms.scale()
        first, linear, x_std, x_scale = [], [], [], []
        for x, (_, rows) in zip(inputs[:n_groups], stack.groups, strict=True):
            k = rows.stop - rows.start
            w = w1[rows, :, d:]  # [k, H, C], rows D + C apart: no copy
            xs_g, scale_g = _context(stack.context_norms, context_scale, x, rows)
            if xs_g.dim() == 2:  # [B, C]: one standardised x (or x itself) for the group
                h = torch.addmm(b1[rows].flatten(), xs_g, w.flatten(0, 1).t())
                c = torch.addmm(b_context[rows].flatten(), xs_g,
                                w_context[rows].flatten(0, 1).t())  # fmt: skip
                first.append(h.view(-1, k, hidden).transpose(0, 1))
                linear.append(c.view(-1, k, 2 * d).transpose(0, 1))
            else:  # [k, B, C]: heads loaded from different runs, each its own statistics
                first.append(torch.baddbmm(b1[rows].unsqueeze(1), xs_g, w.transpose(1, 2)))
                linear.append(torch.baddbmm(b_context[rows].unsqueeze(1), xs_g,
                                            w_context[rows].transpose(1, 2)))  # fmt: skip
            x_std.append(xs_g)
            x_scale.append(scale_g)

        # the y columns of the first layer, the other layers, and the affine flow
        y_scale = stack.y_norms.scale()
        y = torch.stack([batch[k] for k in stack.y_keys])  # [n, B, D]
        y_std = (y - stack.y_norms.mean.unsqueeze(1)) / y_scale.unsqueeze(1)
        masked = [stack.masks[0] * w1[:, :, :d]]
        masked += [m * r.stack for m, r in zip(stack.masks[1:], stack.layers[1:], strict=True)]
        pre1 = torch.cat(first) if n_groups > 1 else first[0].contiguous()  # [n, B, H]
        a1 = pre1.baddbmm_(y_std, masked[0].transpose(1, 2)).relu_()
        inputs_, phi = _hidden_forward(a1, masked[1:], [r.stack for r in stack.biases[1:]])
        phi = phi.add_(torch.cat(linear) if n_groups > 1 else linear[0])
        log_q, z, scale, den = _affine(phi, y_std, -y_scale.log().sum(-1))

        # the marginals
        m_scale = stack.marginal_norms.scale()
        y_m = torch.stack([batch[k] for k in stack.marginal_keys])
        y_m_std = (y_m - stack.marginal_norms.mean.unsqueeze(1)) / m_scale.unsqueeze(1)
        m_masked = [m * r.stack for m, r in zip(stack.marginal_masks, stack.marginal_layers,
                                                 strict=True)]  # fmt: skip
        m_inputs, m_phi = _hidden_forward(y_m_std, m_masked,
                                          [r.stack for r in stack.marginal_biases])  # fmt: skip
        log_q_y, m_z, m_scale_, m_den = _affine(m_phi, y_m_std, -m_scale.log().sum(-1))

        ctx.stack = stack
        ctx.x_scale = x_scale
        ctx.lengths = (n_groups, len(inputs_), len(masked), len(m_inputs), len(m_masked))
        ctx.save_for_backward(y_std, z, scale, den, m_z, m_scale_, m_den, *x_std, *inputs_,
                              *masked, *m_inputs, *m_masked)  # fmt: skip
        # the loss counts each marginal once per head using it, as the plain loop does
        uses = stack.marginal_uses.to(log_q_y.dtype)
        loss = -(log_q.mean(1).sum() + (log_q_y.mean(1) * uses).sum())
        return loss, log_q - log_q_y[stack.marginal_of_row]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor | None, grad_ratios: Tensor | None):  # noqa: ANN001, ANN205
        stack: StackedHeads = ctx.stack
        d, hidden = stack.d, stack.hidden
        y_std, z, scale, den, m_z, m_scale, m_den, *rest = ctx.saved_tensors
        lengths = list(ctx.lengths)
        x_std, inputs, masked, m_inputs, m_masked = [], [], [], [], []
        for out, length in zip((x_std, inputs, masked, m_inputs, m_masked), lengths, strict=True):
            out.extend(rest[:length])
            rest = rest[length:]
        # d loss / d log q(y | x) [n, B] and d loss / d log q(y) [m, B]
        batch = z.shape[1]
        per_sample = (-grad_loss / batch) if grad_loss is not None else z.new_zeros(())
        grad_log_q = per_sample.expand(z.shape[:2])
        uses = stack.marginal_uses.to(z.dtype).unsqueeze(1)
        grad_log_q_y = (per_sample * uses).expand(m_z.shape[:2])
        if grad_ratios is not None:
            grad_log_q = grad_log_q + grad_ratios
            grad_log_q_y = grad_log_q_y.index_add(0, stack.marginal_of_row, grad_ratios, alpha=-1)

        # conditional heads: the flow, the hidden layers, then the first layer
        d_phi = _affine_backward(grad_log_q, y_std, z, scale, den)  # [n, B, 2D]
        d_layers, d_biases, d_a1 = _hidden_backward(d_phi, inputs, masked[1:], stack.masks[1:],
                                                    input_grad=True)  # fmt: skip
        d_pre1 = _relu_backward(d_a1, inputs[0])  # [n, B, H]; inputs[0] = relu(pre1)
        w1, w_context = stack.layers[0].stack, stack.context_weight.stack
        d_w1 = torch.empty_like(w1)
        # [n, D, B] @ [n, B, H], transposed: a small left operand is the fast way round
        d_w1[:, :, :d] = torch.bmm(y_std.transpose(1, 2), d_pre1).transpose(1, 2) * stack.masks[0]
        d_wc = torch.empty_like(w_context)
        grad_xs: list[Tensor | None] = []
        for g, (_, rows) in enumerate(stack.groups):
            k = rows.stop - rows.start
            xs_g, dh, dc = x_std[g], d_pre1[rows], d_phi[rows]  # [k, B, H], [k, B, 2D]
            needs = ctx.needs_input_grad[2 + g]
            if xs_g.dim() == 2:  # standardised once (or not at all): [B, C]
                dh = dh.transpose(0, 1).reshape(-1, k * hidden)  # [B, k H]
                dc = dc.transpose(0, 1).reshape(-1, k * 2 * d)  # [B, k 2D]
                torch.mm(dh.t(), xs_g, out=d_w1[rows, :, d:].flatten(0, 1))
                torch.mm(dc.t(), xs_g, out=d_wc[rows].flatten(0, 1))
                grad_x = (
                    torch.addmm(dh @ w1[rows, :, d:].flatten(0, 1), dc,
                                w_context[rows].flatten(0, 1)) if needs else None
                )  # fmt: skip
            else:  # per head: [k, B, C]
                d_w1[rows, :, d:] = torch.bmm(dh.transpose(1, 2), xs_g)
                d_wc[rows] = torch.bmm(dc.transpose(1, 2), xs_g)
                grad_x = (
                    torch.baddbmm(torch.bmm(dh, w1[rows, :, d:]), dc, w_context[rows])
                    if needs else None
                )  # fmt: skip
            if grad_x is not None:
                if ctx.x_scale[g] is not None:  # None: no context standardiser
                    grad_x = grad_x.div_(ctx.x_scale[g])
                grad_x = grad_x.sum(0) if grad_x.dim() == 3 else grad_x
            grad_xs.append(grad_x)

        # marginals
        m_d_phi = _affine_backward(grad_log_q_y, m_inputs[0], m_z, m_scale, m_den)
        m_d_layers, m_d_biases, _ = _hidden_backward(
            m_d_phi, m_inputs, m_masked, stack.marginal_masks, input_grad=False
        )

        grads = [d_w1, *d_layers, d_pre1.sum(1), *d_biases, d_wc, d_phi.sum(1),
                 *m_d_layers, *m_d_biases]  # fmt: skip
        return (None, None, *grad_xs, *grads)
