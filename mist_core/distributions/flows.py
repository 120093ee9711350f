"""Trainable densities q(y) and q(y | x) as normalizing flows over a standard normal.

A density is an ``nn.Module``; asking it for a distribution returns an ordinary
:class:`torch.distributions.Distribution` (zuko's convention), so ``.log_prob`` and
``.sample`` need no extra API::

    q_y = transformed_normal(2, hidden_dims=[64])
    q_y.log_prob(y)                      # y: [..., 2] -> [...]
    q_y_x = conditional_transformed_normal(2, context_dim=512, hidden_dims=[128, 64])
    q_y_x.condition(x).log_prob(y)       # x: [..., 512] broadcast against y: [..., 2]

The flows map data ``y`` towards the base ``N(0, I)``: the first layer is the EMA
standardiser (``normalization="emanorm"``), so raw pixel coordinates train from step one.

References:
    Papamakarios et al., "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017.
    Durkan et al., "Neural Spline Flows", NeurIPS 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution, Independent, Normal, Transform

from mist_core._validation import strict_kwargs
from mist_core.distributions._zuko import (
    DependentTransform,
    Flow,
    LazyDistribution,
    LazyTransform,
    MaskedAutoregressiveTransform,
    MaskedLinear,
    MonotonicAffineTransform,
    MonotonicRQSTransform,
    NormalizingFlow,
    broadcast,
    unpack,
)
from mist_core.distributions.normalization import EMANorm, _unexpanded
from mist_core.nn import mlp

__all__ = [
    "CONDITIONAL_TRANSFORMS",
    "NORMALIZATIONS",
    "TRANSFORMS",
    "ConditionalTransformedNormal",
    "TransformedNormal",
    "conditional_transformed_normal",
    "transformed_normal",
]

NORMALIZATIONS = ("emanorm", None)
SPLINE_BINS = 8


_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


def _sum_last(t: Tensor) -> Tensor:
    """``t.sum(-1)``, the same numbers; over a last dimension of 2 as one addition (torch's
    reduction over so short a dimension is ~10x slower than the addition)."""
    return t[..., 0] + t[..., 1] if t.shape[-1] == 2 else t.sum(-1)


class _Dependent(DependentTransform):
    """zuko's ``DependentTransform`` of a univariate map over the last dimension, its
    log-determinant summed by :func:`_sum_last`."""

    def __init__(self, base: Transform) -> None:
        super().__init__(base, 1)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return _sum_last(self.base.log_abs_det_jacobian(x, y))

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, ladj = self.base.call_and_ladj(x)
        return y, _sum_last(ladj)


class _StandardNormal(Independent):
    """``Independent(Normal(0, 1), 1)`` (as :class:`StandardNormal` builds it) whose
    ``log_prob`` leaves the zero mean and unit scale out: the same numbers bit for bit,
    without broadcasting the mean and scale of each context against every point (most of
    the time of a batch of posterior maps ``[B, H, W, D]``). Sampling is torch's."""

    def log_prob(self, value: Tensor) -> Tensor:
        # Normal.log_prob is -((value - 0) ** 2) / (2 * 1) - log(1) - log(sqrt(2 pi)), and
        # -v / 2 = v * -0.5 exactly
        log_prob = _sum_last(value.square().mul_(-0.5).sub_(_LOG_SQRT_2PI))
        return log_prob.expand(torch.broadcast_shapes(log_prob.shape, self.batch_shape))


class StandardNormal(LazyDistribution):
    """The base ``N(0, I)`` over ``D`` features (buffers, so it follows ``.to(device)``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def forward(self, c: Tensor | None = None) -> Distribution:
        return _StandardNormal(
            Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False
        )


class DiagonalAffine(LazyTransform):
    r"""Element-wise :math:`z = e^{a} y + b`; ``a, b`` are parameters or an MLP of the context."""

    def __init__(
        self, features: int, context: int = 0, hidden_features: Sequence[int] = ()
    ) -> None:
        super().__init__()
        self.features = features
        if context > 0:
            self.hyper: nn.Module | None = mlp(context, hidden_features, 2 * features)
            last = self.hyper[-1] if isinstance(self.hyper, nn.Sequential) else self.hyper
            with torch.no_grad():  # start at the identity map
                last.weight.zero_()
                last.bias.zero_()
        else:
            self.hyper = None
            self.shift = nn.Parameter(torch.zeros(features))
            self.log_scale = nn.Parameter(torch.zeros(features))

    def forward(self, c: Tensor | None = None) -> Transform:
        if self.hyper is None:
            shift, scale = self.shift, self.log_scale
        else:
            shift, scale = self.hyper(c).chunk(2, dim=-1)
        return _Dependent(MonotonicAffineTransform(shift, scale))


class _MaskedAutoregressive(MaskedAutoregressiveTransform):
    """zuko's masked autoregressive layer, started at the identity, with two additions.

    - **A linear context path.** With a context, every output parameter also gets a linear
      function of the context, ``phi += W c + b``, next to the masked network. In a MADE
      the first variables' parameters can only use the few hidden units of the lowest
      degree, so even a linear dependence on the context (a Gaussian conditional, the
      commonest case) is learnt slowly and badly. ``W`` and ``b`` start at zero: at
      initialisation the layer is zuko's, and a checkpoint saved without them loads as
      that same function.
    - **A shortcut for posterior maps**: when a context vector ``[C]`` (or each of a batch,
      ``[B, 1, 1, C]``) conditions many points ``[..., N, D]``, the context's part of the
      conditioner's first layer is computed once per context instead of once per point (a
      512-d context and a 2-d landmark: ~250x less work in that layer), and the rest of
      the conditioner once per distinct value of the variables it reads (for ``D = 2``, a
      pixel grid's columns or rows: ~200x less work). Same parameters, same numbers (up
      to float rounding).
    """

    def __init__(self, features: int, context: int = 0, **kwargs: object) -> None:
        super().__init__(features, context, **kwargs)
        if context > 0:
            # zeros, not nn.Linear: no draw from the RNG, so seeded models keep their weights
            self.context_weight = nn.Parameter(torch.zeros(features * self.total, context))
            self.context_bias = nn.Parameter(torch.zeros(features * self.total))
        else:
            self.context_weight = self.context_bias = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # A state dict without the linear context path means a path of zeros (absent).
        if self.context_weight is not None:
            for name in ("context_weight", "context_bias"):
                state_dict.setdefault(prefix + name, torch.zeros_like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _hyper(self, c: Tensor | None, x: Tensor) -> Tensor:
        """The flat parameters ``[..., D * total]`` of the univariate transforms (for many
        points per context, broadcastable to that shape: see :meth:`_hyper_shared`)."""
        if c is None:
            return self.hyper(x)
        if isinstance(self.hyper[0], MaskedLinear) and _context_is_shared(c, x):
            return self._hyper_shared(c, x)
        phi = self.hyper(torch.cat(broadcast(x, c, ignore=1), dim=-1))
        return phi + nn.functional.linear(c, self.context_weight, self.context_bias)

    def _hyper_shared(self, c: Tensor, x: Tensor) -> Tensor:
        """:meth:`_hyper` when contexts ``c [..., C]`` are shared by many points ``x [..., D]``
        (one context ``[C]`` for a grid ``[H, W, D]``, or a batch ``[B, 1, 1, C]``).

        The first product splits into a context part, computed once per context, and a
        point part, computed once per distinct point of the variables the conditioner
        reads: along a dimension of ``x`` where those are constant (for ``D = 2`` a MADE
        reads only its first variable, so a pixel grid's point part is one row or column)
        it is computed once, and the result keeps size 1 there. The context terms enter the
        first and last products as their biases, and ReLUs act in place (a product's
        output: no backward pass needs it).

        Returns:
            ``[..., D * total]``, broadcastable to ``c`` and ``x``'s batch shapes.
        """
        layers = list(self.hyper)  # (MaskedMLP[1:] would rebuild a MaskedMLP)
        first = layers[0]
        d = x.shape[-1]
        weight = first.mask * first.weight  # [hidden, D + C]
        read = first.mask[:, :d].any(0)  # [D]: the variables the conditioner reads
        keys = _unexpanded(x)[..., read]  # [..., k]
        for dim in range(keys.dim() - 1):
            if keys.shape[dim] > 1 and torch.equal(keys, keys.narrow(dim, 0, 1).expand_as(keys)):
                keys = keys.narrow(dim, 0, 1)
        shared = nn.functional.linear(c, weight[:, d:], first.bias)  # [..., hidden]
        phi = shared + keys @ weight[:, :d][:, read].t()  # [..., hidden], broadcast
        for index, layer in enumerate(layers[1:], start=1):
            if isinstance(layer, MaskedLinear):
                phi = nn.functional.linear(phi, layer.mask * layer.weight, layer.bias)
            elif isinstance(layer, nn.ReLU) and isinstance(layers[index - 1], MaskedLinear):
                phi = phi.relu_()
            else:
                phi = layer(phi)
        return phi + nn.functional.linear(c, self.context_weight, self.context_bias)

    def meta(self, c: Tensor | None, x: Tensor) -> Transform:
        phi = self._hyper(c, x).unflatten(-1, (-1, self.total))
        return _Dependent(self.univariate(*unpack(phi, self.shapes)))


def _context_is_shared(c: Tensor, x: Tensor) -> bool:
    """Whether some contexts of ``c [..., C]`` are shared by several points of ``x [..., D]``
    (``c``'s batch shape is smaller than the one both broadcast to), as when posterior
    maps are drawn over a pixel grid; in training every point has its own context."""
    contexts = c.shape[:-1]
    return torch.broadcast_shapes(contexts, x.shape[:-1]) != contexts


@torch.no_grad()
def _start_at_identity(layer: LazyTransform) -> LazyTransform:
    """Zero the parameters that produce the univariate maps' parameters (for a 1-d variable
    zuko builds an element-wise layer instead of a MADE): the flow starts at one fixed
    map, the identity for affine layers, instead of a random affine map.

    The first variable of a MADE sees no input but the context, so only its last layer's
    bias could undo a random start, and slowly: a random start biases a 1-d marginal for
    hundreds of steps. The random draws still happen, so seeded models keep their other
    weights.
    """
    hyper = getattr(layer, "hyper", None)
    if hyper is not None:
        hyper[-1].weight.zero_()
        hyper[-1].bias.zero_()
    else:
        for parameter in layer.phi:
            parameter.zero_()
    return layer


def _affine_autoregressive(
    features: int, context: int, hidden: Sequence[int], index: int
) -> LazyTransform:
    # Alternate the variable order between stacked layers, as in MAF.
    order = torch.arange(features) if index % 2 == 0 else torch.arange(features).flip(0)
    return _start_at_identity(
        _MaskedAutoregressive(features, context, order=order, hidden_features=tuple(hidden))
    )


def _spline_autoregressive(
    features: int, context: int, hidden: Sequence[int], index: int
) -> LazyTransform:
    order = torch.arange(features) if index % 2 == 0 else torch.arange(features).flip(0)
    return _start_at_identity(
        _MaskedAutoregressive(
            features,
            context,
            order=order,
            univariate=MonotonicRQSTransform,
            shapes=[(SPLINE_BINS,), (SPLINE_BINS,), (SPLINE_BINS - 1,)],
            hidden_features=tuple(hidden),
        )
    )


def _diagonal_affine(
    features: int, context: int, hidden: Sequence[int], index: int
) -> LazyTransform:
    return DiagonalAffine(features, context, hidden)


_LayerFactory = Callable[[int, int, Sequence[int], int], LazyTransform]

#: Unconditional flow layers for :func:`transformed_normal`, by name.
TRANSFORMS: dict[str, _LayerFactory] = {
    "affine_autoregressive": _affine_autoregressive,
    "spline_autoregressive": _spline_autoregressive,
    "diagonal_affine": _diagonal_affine,
}
#: Conditional flow layers for :func:`conditional_transformed_normal`, by name.
CONDITIONAL_TRANSFORMS: dict[str, _LayerFactory] = {
    "conditional_affine_autoregressive": _affine_autoregressive,
    "conditional_spline_autoregressive": _spline_autoregressive,
    "conditional_diagonal_affine": _diagonal_affine,
}


class _ObservedFlow(NormalizingFlow):
    """A flow distribution that shows data to the standardiser before scoring it."""

    def __init__(self, transform: Transform, base: Distribution, norm: EMANorm | None) -> None:
        super().__init__(transform, base)
        self._norm = norm

    def log_prob(self, x: Tensor) -> Tensor:
        if self._norm is not None and self._norm.training:
            self._norm.observe(x)
        # Broadcast y against the context's batch shape up front: some layers size their
        # log-determinant by y alone.
        shape = torch.broadcast_shapes(x.shape, self.batch_shape + self.event_shape)
        return super().log_prob(x.expand(shape))

    def expand(self, batch_shape: Size, new: Distribution | None = None) -> Distribution:
        new = super().expand(batch_shape, new)
        new._norm = self._norm
        return new


class _FlowDensity(nn.Module):
    """Shared plumbing: a zuko ``Flow`` with an optional EMA standardiser in front."""

    def __init__(
        self, layers: list[LazyTransform], features: int, normalization: EMANorm | None
    ) -> None:
        super().__init__()
        self.features = features
        self.normalization = normalization
        transforms = ([normalization] if normalization is not None else []) + layers
        self.flow = Flow(transforms, StandardNormal(features))

    def _distribution(self, context: Tensor | None) -> Distribution:
        flow = self.flow(context)
        return _ObservedFlow(flow.transform, flow.base, self.normalization)

    def _check_y(self, y: Tensor) -> None:
        if y.shape[-1] != self.features:
            raise ValueError(
                f"this density is over {self.features}-d vectors; got y of shape {tuple(y.shape)}"
            )


class TransformedNormal(_FlowDensity):
    r"""A trainable density :math:`q(y)` over ``[..., D]`` vectors.

    ``log_prob(y)`` maps ``[..., D] -> [...]``; ``sample(shape)`` returns ``[*shape, D]``.
    In training mode, ``log_prob`` also updates the EMA standardiser with ``y``.
    """

    def distribution(self) -> Distribution:
        """The density as a :class:`torch.distributions.Distribution`."""
        return self._distribution(None)

    def forward(self) -> Distribution:
        return self.distribution()

    def log_prob(self, y: Tensor) -> Tensor:
        self._check_y(y)
        return self.distribution().log_prob(y)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        return self.distribution().sample(Size(sample_shape))

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        return self.distribution().rsample(Size(sample_shape))


class ConditionalTransformedNormal(_FlowDensity):
    r"""A trainable conditional density :math:`q(y \mid x)`.

    ``condition(x)`` with ``x: [..., C]`` returns a distribution over ``[..., D]`` whose
    ``log_prob(y)`` broadcasts the leading shapes of ``x`` and ``y``, e.g. a ``[1, 1, C]``
    context against a ``[H, W, D]`` grid gives ``[H, W]``.
    """

    def __init__(
        self,
        layers: list[LazyTransform],
        features: int,
        context_features: int,
        normalization: EMANorm | None,
        context_normalization: EMANorm | None = None,
    ) -> None:
        super().__init__(layers, features, normalization)
        self.context_features = context_features
        #: Standardises the context before the conditioner sees it (raw units work).
        self.context_normalization = context_normalization

    def condition(self, context: Tensor) -> Distribution:
        """The distribution :math:`q(y \\mid x = \\text{context})`; batch shape ``context[:-1]``.

        In training mode the context standardiser observes ``context`` first.
        """
        if context.shape[-1] != self.context_features:
            raise ValueError(
                f"this density is conditioned on {self.context_features}-d vectors; "
                f"got a context of shape {tuple(context.shape)}"
            )
        norm = self.context_normalization
        if norm is not None:
            norm.observe(context)  # no-op in eval mode
            context = norm.standardize(context)
        return self._distribution(context)

    def forward(self, context: Tensor) -> Distribution:
        return self.condition(context)

    def log_prob(self, y: Tensor, context: Tensor) -> Tensor:
        """``log q(y | context)``, broadcasting ``y: [..., D]`` against ``context: [..., C]``."""
        self._check_y(y)
        return self.condition(context).log_prob(y)


def _check_common(
    name: str,
    valid: dict[str, _LayerFactory],
    hidden_dims: Sequence[int],
    normalization: str | None,
    n_transforms: int,
    **dims: int,
) -> None:
    if name not in valid:
        raise ValueError(
            f"unknown transform_name {name!r}; valid names: {', '.join(sorted(valid))}"
        )
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalization {normalization!r}; valid values: 'emanorm' or None"
        )
    if not isinstance(n_transforms, int) or n_transforms < 1:
        raise ValueError(f"n_transforms must be a positive integer, got {n_transforms!r}")
    if isinstance(hidden_dims, (int, str)) or any(
        not isinstance(h, int) or h < 1 for h in hidden_dims
    ):
        raise ValueError(f"hidden_dims must be a list of positive integers, got {hidden_dims!r}")
    for key, value in dims.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


@strict_kwargs
def transformed_normal(
    input_dim: int,
    hidden_dims: Sequence[int] = (64,),
    transform_name: str = "affine_autoregressive",
    normalization: str | None = "emanorm",
    n_transforms: int = 1,
) -> TransformedNormal:
    """Build a trainable :math:`q(y)` for ``input_dim``-d vectors by name.

    Args:
        input_dim: ``D``, the size of ``y``.
        hidden_dims: widths of the autoregressive network's hidden layers.
        transform_name: one of :data:`TRANSFORMS`.
        normalization: ``"emanorm"`` (EMA standardiser first) or ``None``.
        n_transforms: how many flow layers to stack (orders alternate).

    Example (a new flow is the identity map, so an untrained :math:`q` is
    :math:`\\mathcal N(0, I)`: :math:`\\log q(0) = -\\log 2\\pi` in 2-d):

    >>> import torch
    >>> from mist_core.distributions import transformed_normal
    >>> q = transformed_normal(2, hidden_dims=(16,))
    >>> round(q.eval().log_prob(torch.zeros(2)).item(), 4)
    -1.8379
    >>> _ = q.train()
    >>> y = torch.randn(64, 2) * 3 + 1  # [N, D]
    >>> q.log_prob(y).shape  # training mode: the standardiser observes y too
    torch.Size([64])
    >>> q.sample((5,)).shape
    torch.Size([5, 2])
    """
    _check_common(
        transform_name, TRANSFORMS, hidden_dims, normalization, n_transforms, input_dim=input_dim
    )
    layers = [
        TRANSFORMS[transform_name](input_dim, 0, hidden_dims, i) for i in range(n_transforms)
    ]
    norm = EMANorm(input_dim) if normalization == "emanorm" else None
    return TransformedNormal(layers, input_dim, norm)


@strict_kwargs
def conditional_transformed_normal(
    input_dim: int,
    context_dim: int,
    hidden_dims: Sequence[int] = (128, 64),
    transform_name: str = "conditional_affine_autoregressive",
    normalization: str | None = "emanorm",
    n_transforms: int = 1,
) -> ConditionalTransformedNormal:
    """Build a trainable :math:`q(y \\mid x)` by name.

    Args:
        input_dim: ``D``, the size of ``y``.
        context_dim: ``C``, the size of ``x``; it feeds every hidden layer's input.
        hidden_dims: widths of the conditioner network's hidden layers.
        transform_name: one of :data:`CONDITIONAL_TRANSFORMS`.
        normalization: ``"emanorm"`` (EMA standardisers on ``y``, counted in the density,
            and on the context before the conditioner) or ``None``.
        n_transforms: how many flow layers to stack (orders alternate).

    Example (untrained, it is :math:`\\mathcal N(0, I)` whatever the context):

    >>> import torch
    >>> from mist_core.distributions import conditional_transformed_normal
    >>> q = conditional_transformed_normal(2, context_dim=3, hidden_dims=(16,))
    >>> round(q.eval().log_prob(torch.zeros(2), torch.randn(3)).item(), 4)
    -1.8379
    >>> _ = q.train()
    >>> x, y = torch.randn(64, 3), torch.randn(64, 2)  # [N, C], [N, D]
    >>> q.log_prob(y, x).shape
    torch.Size([64])
    >>> q.condition(x).sample().shape
    torch.Size([64, 2])
    >>> grid = torch.zeros(6, 7, 2)  # [H, W, D]: one context against every point
    >>> q.condition(x[:1].view(1, 1, 3)).log_prob(grid).shape
    torch.Size([6, 7])
    """
    _check_common(
        transform_name,
        CONDITIONAL_TRANSFORMS,
        hidden_dims,
        normalization,
        n_transforms,
        input_dim=input_dim,
        context_dim=context_dim,
    )
    factory = CONDITIONAL_TRANSFORMS[transform_name]
    layers = [factory(input_dim, context_dim, hidden_dims, i) for i in range(n_transforms)]
    if normalization == "emanorm":
        return ConditionalTransformedNormal(
            layers,
            input_dim,
            context_dim,
            EMANorm(input_dim),
            # features of a random encoder can be constant in some units: floor at 10%
            EMANorm(context_dim, min_scale_ratio=0.1),
        )
    return ConditionalTransformedNormal(layers, input_dim, context_dim, None)
