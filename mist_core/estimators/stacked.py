"""Many DoE heads evaluated together: the fast path of :class:`MultiMIEstimator`.

The seed's model has one DoE per (representation, landmark): 15 heads, each a conditional
MADE on ``[landmark (D), representation (C = 512)]`` and a marginal shared by the heads of
a landmark. Evaluated one module at a time, that is 15 small networks, each paying
Python and dispatch overhead on tiny matrices, and 15 marginal evaluations for 5 marginals.

Here the heads are evaluated at once, with the same parameters and the same numbers:

- all the heads reading one representation share **one** matrix product, their first
  layers and linear context paths stacked. Their context standardisers have seen the
  same batches, so they hold the same statistics and standardise once (if they differ,
  as for heads loaded from different runs, each head standardises on its own and the
  products are batched);
- the remaining layers of all heads run as batched matrix products (``torch.bmm``);
- each distinct marginal is evaluated once (the marginals too as one batched network when
  they share an architecture), and counted in the loss once per head using it, exactly
  as the plain loop counts it.

Parameters stay in the heads' own modules (they are stacked on every call, and gradients
flow back through the stacking), so checkpoints, posterior maps and the plain path are
unchanged. :func:`stackable` says when the fast path applies: every head a :class:`DoE`
whose q(y|x) is one affine masked autoregressive layer (``n_transforms=1``, D >= 2) with
EMA standardisers, and the same widths for the heads reading the same representation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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

__all__ = ["stackable", "stacked_batch_terms"]

_LOG_2PI = math.log(2.0 * math.pi)


def _parts(head: DoE) -> tuple[EMANorm, EMANorm, _MaskedAutoregressive] | None:
    """(y standardiser, context standardiser, the MADE layer), or None if not stackable."""
    q = head.q_Y_given_X
    if not isinstance(q, ConditionalTransformedNormal):
        return None
    if not isinstance(q.normalization, EMANorm) or not isinstance(
        q.context_normalization, EMANorm
    ):
        return None
    layers = list(q.flow.transform.transforms)
    if len(layers) != 2 or layers[0] is not q.normalization:
        return None
    made = layers[1]
    if not isinstance(made, _MaskedAutoregressive) or made.context_weight is None:
        return None
    if made.univariate is not MonotonicAffineTransform or made.total != 2:
        return None
    linears = [m for m in made.hyper if isinstance(m, MaskedLinear)]
    others = [m for m in made.hyper if not isinstance(m, MaskedLinear)]
    if len(linears) != 3 or not all(isinstance(m, nn.ReLU) for m in others):
        return None
    return q.normalization, q.context_normalization, made


def _marginal_parts(q: nn.Module) -> tuple[EMANorm, _MaskedAutoregressive] | None:
    """(standardiser, MADE) of a q(y) that can be stacked with others, or None."""
    if not isinstance(q, TransformedNormal) or not isinstance(q.normalization, EMANorm):
        return None
    layers = list(q.flow.transform.transforms)
    if len(layers) != 2 or layers[0] is not q.normalization:
        return None
    made = layers[1]
    if not isinstance(made, _MaskedAutoregressive) or made.context_weight is not None:
        return None
    if made.univariate is not MonotonicAffineTransform or made.total != 2:
        return None
    if not all(isinstance(m, (MaskedLinear, nn.ReLU)) for m in made.hyper):
        return None
    return q.normalization, made


def _linears(made: _MaskedAutoregressive) -> list[MaskedLinear]:
    return [m for m in made.hyper if isinstance(m, MaskedLinear)]


def _batched_layers(phi: Tensor, layers: Sequence[Sequence[MaskedLinear]]) -> Tensor:
    """``phi: [n, B, in]`` through ``layers[j][i]`` (layer j of model i), ReLU between."""
    for j, group in enumerate(layers):
        w = torch.stack([m.mask * m.weight for m in group])  # [n, out, in]
        b = torch.stack([m.bias for m in group])  # [n, out]
        phi = torch.baddbmm(b.unsqueeze(1), phi, w.transpose(1, 2))
        if j < len(layers) - 1:
            phi = torch.relu(phi)
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


def _marginals(
    marginals: Sequence[nn.Module], y_keys: Sequence[str], batch: Mapping[str, Tensor]
) -> list[Tensor]:
    """``log q(y)`` ``[B]`` of each distinct marginal: stacked when they allow it."""
    parts = [_marginal_parts(q) for q in marginals]
    shapes = {tuple(tuple(m.weight.shape) for m in _linears(p[1])) for p in parts if p}
    if len(marginals) < 2 or not all(parts) or len(shapes) != 1:
        return [q.log_prob(batch[y]) for q, y in zip(marginals, y_keys, strict=True)]
    for (norm, _), y_key in zip(parts, y_keys, strict=True):  # type: ignore[misc]
        norm.observe(batch[y_key])
    y_std = torch.stack(
        [norm.standardize(batch[y]) for (norm, _), y in zip(parts, y_keys, strict=True)]  # type: ignore[misc]
    )
    log_det0 = torch.stack([-norm.scale().log().sum() for norm, _ in parts])  # type: ignore[misc]
    layers = list(zip(*(_linears(made) for _, made in parts), strict=True))  # type: ignore[misc]
    return list(_affine_log_prob(_batched_layers(y_std, layers), y_std, log_det0))


def _shape(head: DoE) -> tuple[int, ...]:
    _, _, made = _parts(head)  # type: ignore[misc]
    return tuple(tuple(m.weight.shape) for m in made.hyper if isinstance(m, MaskedLinear))


def stackable(pairs: Sequence[tuple[str, str]], heads: Sequence[nn.Module]) -> bool:
    """Whether :func:`stacked_batch_terms` computes these heads (see the module docstring)."""
    if len(heads) < 2 or not all(isinstance(h, DoE) and _parts(h) for h in heads):
        return False
    shapes = {_shape(h) for h in heads}
    if len(shapes) != 1:
        return False
    for head in heads:  # the context feeds every first-layer unit (zuko's MADE does)
        norm_y, _, made = _parts(head)  # type: ignore[misc]
        if not bool(made.hyper[0].mask[:, norm_y.features :].all()):
            return False
    return True


def _same_statistics(a: EMANorm, b: EMANorm) -> bool:
    return (
        a.min_scale_ratio == b.min_scale_ratio
        and a.eps == b.eps
        and torch.equal(a.mean, b.mean)
        and torch.equal(a.std, b.std)
    )


def stacked_batch_terms(
    pairs: Sequence[tuple[str, str]], heads: Sequence[DoE], batch: Mapping[str, Tensor]
) -> BatchTerms:
    """The same :class:`BatchTerms` as evaluating each head on its own, in one pass.

    ``pairs[i] = (x_key, y_key)`` is what ``heads[i]`` reads from ``batch``.
    """
    parts = [_parts(h) for h in heads]
    n_heads = len(heads)
    d = batch[pairs[0][1]].shape[-1]
    first = [made.hyper[0] for _, _, made in parts]  # type: ignore[misc]
    hidden = first[0].weight.shape[0]
    by_x: dict[str, list[int]] = {}
    for index, (x_key, _) in enumerate(pairs):
        by_x.setdefault(x_key, []).append(index)

    # 1. standardisers see the batch (training mode only); one reduction per tensor
    training = any(norm_c.training for _, norm_c, _ in parts)  # type: ignore[misc]
    if training:
        for x_key, indices in by_x.items():
            flat = batch[x_key].detach().reshape(-1, batch[x_key].shape[-1])
            mean = flat.mean(0)
            std = (flat - mean).square_().mean(0).sqrt_()  # two-pass: exact for large means
            for i in indices:
                parts[i][1].observe_moments(batch[x_key], mean, std)  # type: ignore[index]
        for (_, y_key), (norm_y, _, _) in zip(pairs, parts, strict=True):  # type: ignore[misc]
            norm_y.observe(batch[y_key])

    # 2. first layer and linear context path: one product per representation. The
    #    context columns of a MADE's first mask are all ones (checked in `stackable`).
    context_out: list[Tensor | None] = [None] * n_heads
    for x_key, indices in by_x.items():
        w = torch.stack(
            [torch.cat([first[i].weight[:, d:], parts[i][2].context_weight]) for i in indices]
        )  # type: ignore[index]  # [k, H + 2D, C]
        b = torch.stack(
            [torch.cat([first[i].bias, parts[i][2].context_bias]) for i in indices]  # type: ignore[index]
        )  # [k, H + 2D]
        norms = [parts[i][1] for i in indices]  # type: ignore[index]
        if all(_same_statistics(norms[0], norm) for norm in norms[1:]):
            # the usual case: the heads of one representation have seen the same batches
            x = norms[0].standardize(batch[x_key])
            out = nn.functional.linear(x, w.flatten(0, 1), b.flatten())
            out = out.unflatten(-1, (len(indices), hidden + 2 * d))  # [B, k, H + 2D]
        else:  # each head standardises with its own statistics (heads from other runs)
            x = torch.stack([norm.standardize(batch[x_key]) for norm in norms])  # [k, B, C]
            out = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)).transpose(0, 1)
        for j, i in enumerate(indices):
            context_out[i] = out[:, j]

    # 3. the y part of the first layer, then the hidden layers, batched over heads
    ys, log_det0 = [], []
    for (_, y_key), (norm_y, _, _) in zip(pairs, parts, strict=True):  # type: ignore[misc]
        ys.append(norm_y.standardize(batch[y_key]))
        log_det0.append(-norm_y.scale().log().sum())
    y_std = torch.stack(ys)  # [n, B, D]
    ctx = torch.stack(context_out)  # type: ignore[arg-type]  # [n, B, H + 2D]
    w1y = torch.stack([f.mask[:, :d] * f.weight[:, :d] for f in first])  # [n, H, D]
    phi = torch.relu(ctx[..., :hidden] + torch.bmm(y_std, w1y.transpose(1, 2)))
    rest = list(zip(*(_linears(made)[1:] for _, _, made in parts), strict=True))  # type: ignore[misc]
    phi = _batched_layers(phi, rest) + ctx[..., hidden:]  # + the linear context path
    log_q_cond = _affine_log_prob(phi, y_std, torch.stack(log_det0))  # [n, B]

    # 4. each distinct marginal once, stacked
    distinct: dict[tuple[int, str], nn.Module] = {}
    for (_, y_key), head in zip(pairs, heads, strict=True):
        distinct.setdefault((id(head.q_Y), y_key), head.q_Y)
    values = _marginals(list(distinct.values()), [y for _, y in distinct], batch)
    marginal_values = dict(zip(distinct, values, strict=True))
    loss: Tensor | int = 0
    log_ratios: dict[str, Tensor] = {}
    for index, ((x_key, y_key), head) in enumerate(zip(pairs, heads, strict=True)):
        log_q_y = marginal_values[(id(head.q_Y), y_key)]
        log_q = log_q_cond[index]
        loss = loss - log_q.mean() - log_q_y.mean()
        log_ratios[mi_name(x_key, y_key)] = log_q - log_q_y
    assert isinstance(loss, Tensor)
    return BatchTerms(loss=loss, log_ratios=log_ratios)
