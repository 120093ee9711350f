r"""All 40 tasks of the "Beyond Normal" benchmark, v1 (Czyż et al., NeurIPS 2023).

Built from the published task definitions on top of :mod:`bench.accuracy.samplers`; the
task list is BMI's ``BENCHMARK_TASKS_LIST`` (reference implementation github.com/cbg-ethz/bmi).
Every sampler carries its own answer, ``sampler.mutual_information()`` in nats: the closed
form of its base distribution, which the maps below do not change (they are injective and
act on x and on y separately).

What this module adds to :mod:`bench.accuracy.samplers`:

- The maps :data:`wiggly_x`, :data:`wiggly_y` (strictly increasing perturbations of the
  identity), :data:`bimodal_x`, :data:`bimodal_y` (inverse CDFs of two Gaussian mixtures,
  acting on ``(0, 1)``) and :data:`swissroll` (``(0, 1)`` -> a 2-d Swiss roll).
- :class:`MappedSampler`: a base sampler drawn in float64 with a chain of maps on x and on y,
  cast to the requested dtype at the end; its ``dim_x`` / ``dim_y`` follow the maps.
- :data:`BMI40_TASKS` (id -> sampler factory, in BMI's order) and :data:`BMI40_FAMILY`
  (id -> "gaussian", "copula", "student", "additive", "swissroll" or "spiral").

Ids are ``<map>-<base id>``, maps added on the left, so ``spiral-normal_cdf-...`` applies the
normal CDF first, then the spiral; every map acts on x and on y unless the id says
``_x``. True MI as computed here (nats)::

     1  1v1-normal-0.75                                    0.4133
     2  normal_cdf-1v1-normal-0.75                         0.4133
     3  1v1-additive-0.1                                   1.7094
     4  1v1-additive-0.75                                  0.3333
     5  1v1-bimodal-0.75                                   0.4133
     6  wiggly-1v1-normal-0.75                             0.4133
     7  half_cube-1v1-normal-0.75                          0.4133
     8  student-identity-1-1-1                             0.2242
     9  asinh-student-identity-1-1-1                       0.2242
    10  swissroll_x-normal_cdf-1v1-normal-0.75             0.4133
    11  multinormal-dense-2-2-0.5                          0.2939
    12  multinormal-dense-3-3-0.5                          0.4133
    13  multinormal-dense-5-5-0.5                          0.5928
    14  multinormal-dense-25-25-0.5                        1.2922
    15  multinormal-dense-50-50-0.5                        1.6243
    16  multinormal-sparse-2-2-2-2.0                       1.0217
    17  multinormal-sparse-3-3-2-2.0                       1.0217
    18  multinormal-sparse-5-5-2-2.0                       1.0217
    19  multinormal-sparse-25-25-2-2.0                     1.0217
    20  student-identity-2-2-1                             0.4319
    21  student-identity-2-2-2                             0.1931
    22  student-identity-3-3-2                             0.2909
    23  student-identity-3-3-3                             0.1787
    24  student-identity-5-5-2                             0.4482
    25  student-identity-5-5-3                             0.2985
    26  normal_cdf-multinormal-sparse-3-3-2-2.0            1.0217
    27  normal_cdf-multinormal-sparse-5-5-2-2.0            1.0217
    28  normal_cdf-multinormal-sparse-25-25-2-2.0          1.0217
    29  half_cube-multinormal-sparse-3-3-2-2.0             1.0217
    30  half_cube-multinormal-sparse-5-5-2-2.0             1.0217
    31  half_cube-multinormal-sparse-25-25-2-2.0           1.0217
    32  spiral-multinormal-sparse-3-3-2-2.0                1.0217
    33  spiral-multinormal-sparse-5-5-2-2.0                1.0217
    34  spiral-multinormal-sparse-25-25-2-2.0              1.0217
    35  spiral-normal_cdf-multinormal-sparse-3-3-2-2.0     1.0217
    36  spiral-normal_cdf-multinormal-sparse-5-5-2-2.0     1.0217
    37  spiral-normal_cdf-multinormal-sparse-25-25-2-2.0   1.0217
    38  asinh-student-identity-2-2-1                       0.4319
    39  asinh-student-identity-3-3-2                       0.2909
    40  asinh-student-identity-5-5-2                       0.4482

Bases: ``1v1-normal-0.75`` is a bivariate normal with correlation 0.75; ``dense-d-d-0.5``
has correlation 0.5 between every two coordinates; ``sparse-d-d-2-2.0`` has only
``corr(x_1, y_1) = corr(x_2, y_2) = 0.8``; ``student-identity-d-d-nu`` is a 2d-variate
Student-t with identity dispersion, dependent only through its shared scale. BMI's own
sampler draws with JAX's RNG, so samples here match BMI's only in distribution.

All samples are ``torch.float32`` by default (``dtype=torch.float64`` on request).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bench.accuracy.samplers import (
    AdditiveUniform,
    Bijection,
    Sampler,
    Spiral,
    StudentT,
    asinh,
    half_cube,
    multinormal_dense,
    multinormal_sparse,
    normal_cdf,
    one_v_one_normal,
)

__all__ = [
    "BMI40_FAMILY",
    "BMI40_TASKS",
    "MappedSampler",
    "SwissRoll",
    "bimodal_x",
    "bimodal_y",
    "swissroll",
    "wiggly_x",
    "wiggly_y",
]

#: Where the inverse mixture CDFs clamp their input: ``u`` in ``[U_CLAMP, 1 - U_CLAMP]``.
U_CLAMP = 1e-15
_BISECTION_TOL = 1e-12


# --------------------------------------------------------------------------------------------
# Monotone maps: wiggly and bimodal
# --------------------------------------------------------------------------------------------


def _bisect_increasing(
    f: Callable[[Tensor], Tensor], target: Tensor, lo: Tensor, hi: Tensor
) -> Tensor:
    """Solve ``f(x) = target`` elementwise for a strictly increasing ``f``, given brackets
    with ``f(lo) <= target <= f(hi)``; float64 in and out, to an interval width of 1e-12."""
    lo, hi = lo.clone(), hi.clone()
    width = float((hi - lo).max()) if hi.numel() else 0.0
    steps = max(0, math.ceil(math.log2(width / _BISECTION_TOL))) if width > 0 else 0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        below = f(mid) < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _float64_map(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Run ``fn`` in float64 and return the input's shape and dtype."""

    def wrapped(t: Tensor) -> Tensor:
        return fn(t.to(torch.float64)).to(t.dtype)

    return wrapped


def _wiggly_x_forward(t: Tensor) -> Tensor:
    return (
        t + 0.4 * torch.sin(t) + 0.2 * torch.sin(1.7 * t + 1.0) + 0.03 * torch.sin(3.3 * t - 2.5)
    )


def _wiggly_y_forward(t: Tensor) -> Tensor:
    return (
        t
        - 0.4 * torch.sin(0.4 * t)
        + 0.17 * torch.sin(1.3 * t + 3.5)
        + 0.02 * torch.sin(4.3 * t - 2.5)
    )


def _wiggly_inverse(forward: Callable[[Tensor], Tensor], amplitude: float) -> Callable:
    """Inverse of ``t + (a bounded wiggle with |wiggle| <= amplitude)`` by bisection."""

    def inverse(s: Tensor) -> Tensor:
        return _bisect_increasing(forward, s, s - amplitude, s + amplitude)

    return inverse


#: BMI's wiggly map of x, :math:`f(x) = x + 0.4 \sin x + 0.2 \sin(1.7x + 1)
#: + 0.03 \sin(3.3x - 2.5)`, strictly increasing (``f' >= 0.161``); any shape, keeps dtype.
wiggly_x = Bijection(
    "wiggly_x",
    _float64_map(_wiggly_x_forward),
    _float64_map(_wiggly_inverse(_wiggly_x_forward, 0.4 + 0.2 + 0.03 + 1e-6)),
)
#: BMI's wiggly map of y, :math:`g(y) = y - 0.4 \sin(0.4y) + 0.17 \sin(1.3y + 3.5)
#: + 0.02 \sin(4.3y - 2.5)`, strictly increasing (``g' >= 0.533``); any shape, keeps dtype.
wiggly_y = Bijection(
    "wiggly_y",
    _float64_map(_wiggly_y_forward),
    _float64_map(_wiggly_inverse(_wiggly_y_forward, 0.4 + 0.17 + 0.02 + 1e-6)),
)


def _mixture_cdf(weights: Sequence[float], means: Sequence[float], x: Tensor) -> Tensor:
    """CDF of the unit-variance Gaussian mixture, float64 ``x`` of any shape."""
    return sum(w * torch.special.ndtr(x - m) for w, m in zip(weights, means, strict=True))


def _mixture_sf(weights: Sequence[float], means: Sequence[float], x: Tensor) -> Tensor:
    """Survival function ``1 - CDF`` of the mixture, accurate in the upper tail."""
    return sum(w * torch.special.ndtr(m - x) for w, m in zip(weights, means, strict=True))


def _mixture_quantile(weights: Sequence[float], means: Sequence[float], u: Tensor) -> Tensor:
    """Inverse CDF of the mixture at ``u`` (float64, clamped to ``[U_CLAMP, 1 - U_CLAMP]``):
    bisection on the CDF for ``u <= 1/2`` and on the survival function above, so both tails
    are resolved to the bracket tolerance."""
    u = u.clamp(U_CLAMP, 1.0 - U_CLAMP)
    # Beyond 9 sd from every component both tails are below Phi(-9) ~ 1e-19 < U_CLAMP.
    lo = torch.full_like(u, min(means) - 9.0)
    hi = torch.full_like(u, max(means) + 9.0)
    upper = u > 0.5
    x_low = _bisect_increasing(lambda x: _mixture_cdf(weights, means, x), u, lo, hi)
    x_high = _bisect_increasing(lambda x: -_mixture_sf(weights, means, x), -(1.0 - u), lo, hi)
    return torch.where(upper, x_high, x_low)


def _bimodal(name: str, weights: tuple[float, float], means: tuple[float, float]) -> Bijection:
    return Bijection(
        name,
        _float64_map(lambda u: _mixture_quantile(weights, means, u)),
        _float64_map(lambda x: _mixture_cdf(weights, means, x)),
    )


#: BMI's bimodal map of x: ``u`` in (0, 1) -> the inverse CDF of ``0.3 N(0, 1) + 0.7 N(5, 1)``
#: (apply it to ``normal_cdf`` of a standard normal); the inverse is the mixture CDF.
#: Any shape, keeps dtype; computed in float64, ``u`` clamped to ``[1e-15, 1 - 1e-15]``.
bimodal_x = _bimodal("bimodal_x", (0.3, 0.7), (0.0, 5.0))
#: BMI's bimodal map of y: the inverse CDF of ``0.5 N(-1, 1) + 0.5 N(3, 1)``, as above.
bimodal_y = _bimodal("bimodal_y", (0.5, 0.5), (-1.0, 3.0))


# --------------------------------------------------------------------------------------------
# Swiss roll
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SwissRoll:
    r"""BMI's Swiss-roll embedding of ``u`` in (0, 1) into the plane:
    :math:`t = 1.5\pi (1 + 2u)`, output :math:`(t \cos t, t \sin t) / 21`.

    The norm of the output is ``t / 21``, strictly increasing in ``u``, so the map is
    injective and :meth:`inverse` reads ``u`` back from the norm. ``[n, 1]`` -> ``[n, 2]``
    (keeps dtype, computed in float64).
    """

    dim_in: int = field(default=1, init=False)
    dim_out: int = field(default=2, init=False)

    def __call__(self, u: Tensor) -> Tensor:
        if u.ndim != 2 or u.shape[1] != 1:
            raise ValueError(f"SwissRoll needs u of shape [n, 1], got {tuple(u.shape)}")
        t = 1.5 * math.pi * (1.0 + 2.0 * u[:, 0].to(torch.float64))
        return (torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 21.0).to(u.dtype)

    def inverse(self, xy: Tensor) -> Tensor:
        """``u`` ``[n, 1]`` from points ``[n, 2]`` on the roll."""
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"SwissRoll.inverse needs shape [n, 2], got {tuple(xy.shape)}")
        t = 21.0 * xy.to(torch.float64).norm(dim=1, keepdim=True)
        return (0.5 * (t / (1.5 * math.pi) - 1.0)).to(xy.dtype)


#: The Swiss roll of ``swissroll_x-...`` tasks, ``[n, 1]`` -> ``[n, 2]``.
swissroll = SwissRoll()


# --------------------------------------------------------------------------------------------
# Sampler with chains of maps
# --------------------------------------------------------------------------------------------

Map = Callable[[Tensor], Tensor]


def _chain_dim(maps: tuple[Map, ...], dim: int, side: str) -> int:
    """The output dimension after ``maps``; checks each map fits the dimension it gets."""
    for f in maps:
        need = f.dim if isinstance(f, Spiral) else getattr(f, "dim_in", None)
        if need is not None and need != dim:
            raise ValueError(f"map {f!r} on {side} needs dimension {need}, gets {dim}")
        dim = getattr(f, "dim_out", dim)
    return dim


@dataclass(frozen=True)
class MappedSampler:
    """``base`` drawn in float64, then ``maps_x`` applied to x and ``maps_y`` to y in order
    (left to right), then cast to the requested dtype. The maps are injective, so the MI
    is the base's.

    A map takes ``[n, d]`` to ``[n, d']``; ``d' = d`` unless it has a ``dim_out`` attribute
    (:class:`SwissRoll`), so ``dim_x`` / ``dim_y`` are the dimensions after the maps.
    """

    base: Sampler
    maps_x: tuple[Map, ...] = ()
    maps_y: tuple[Map, ...] = ()

    def __post_init__(self) -> None:
        _chain_dim(self.maps_x, self.base.dim_x, "x")
        _chain_dim(self.maps_y, self.base.dim_y, "y")

    @property
    def dim_x(self) -> int:
        return _chain_dim(self.maps_x, self.base.dim_x, "x")

    @property
    def dim_y(self) -> int:
        return _chain_dim(self.maps_y, self.base.dim_y, "y")

    def mutual_information(self) -> float:
        return self.base.mutual_information()

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """``n`` pairs: ``x: [n, dim_x]``, ``y: [n, dim_y]`` (mapped in float64, cast)."""
        x, y = self.base.sample(n, generator, dtype=torch.float64)
        for f in self.maps_x:
            x = f(x)
        for f in self.maps_y:
            y = f(y)
        return x.to(dtype), y.to(dtype)


# --------------------------------------------------------------------------------------------
# The 40 tasks
# --------------------------------------------------------------------------------------------


def _both(base: Sampler, *maps: Map) -> MappedSampler:
    """``maps`` applied (in order) to x and to y alike."""
    return MappedSampler(base, maps, maps)


def _sparse(d: int) -> Sampler:
    return multinormal_sparse(d, d, n_interacting=2, strength=2.0)


def _spiral(base: Sampler, *before: Map) -> MappedSampler:
    """BMI's spiral tasks: ``before`` maps, then a spiral in the plane (0, 1) for x and
    (1, 2) for y, speed ``1 / dim`` each."""
    sx, sy = Spiral(base.dim_x, plane=(0, 1)), Spiral(base.dim_y, plane=(1, 2))
    return MappedSampler(base, (*before, sx), (*before, sy))


def _build_tasks() -> tuple[dict[str, Callable[[], Sampler]], dict[str, str]]:
    bn = lambda: one_v_one_normal(0.75)  # noqa: E731
    tasks: dict[str, tuple[str, Callable[[], Sampler]]] = {
        "1v1-normal-0.75": ("gaussian", bn),
        "normal_cdf-1v1-normal-0.75": ("copula", lambda: _both(bn(), normal_cdf)),
        "1v1-additive-0.1": ("additive", lambda: AdditiveUniform(0.1)),
        "1v1-additive-0.75": ("additive", lambda: AdditiveUniform(0.75)),
        "1v1-bimodal-0.75": (
            "copula",
            lambda: MappedSampler(bn(), (normal_cdf, bimodal_x), (normal_cdf, bimodal_y)),
        ),
        "wiggly-1v1-normal-0.75": (
            "copula",
            lambda: MappedSampler(bn(), (wiggly_x,), (wiggly_y,)),
        ),
        "half_cube-1v1-normal-0.75": ("copula", lambda: _both(bn(), half_cube)),
        "student-identity-1-1-1": ("student", lambda: StudentT(1, 1, dof=1)),
        "asinh-student-identity-1-1-1": ("student", lambda: _both(StudentT(1, 1, dof=1), asinh)),
        "swissroll_x-normal_cdf-1v1-normal-0.75": (
            "swissroll",
            lambda: MappedSampler(bn(), (normal_cdf, swissroll), (normal_cdf,)),
        ),
    }
    for d in (2, 3, 5, 25, 50):
        tasks[f"multinormal-dense-{d}-{d}-0.5"] = ("gaussian", lambda d=d: multinormal_dense(d, d))
    for d in (2, 3, 5, 25):
        tasks[f"multinormal-sparse-{d}-{d}-2-2.0"] = ("gaussian", lambda d=d: _sparse(d))
    for d, dof in ((2, 1), (2, 2), (3, 2), (3, 3), (5, 2), (5, 3)):
        tasks[f"student-identity-{d}-{d}-{dof}"] = (
            "student",
            lambda d=d, dof=dof: StudentT(d, d, dof=dof),
        )
    for prefix, family, build in (
        ("normal_cdf", "copula", lambda d: _both(_sparse(d), normal_cdf)),
        ("half_cube", "copula", lambda d: _both(_sparse(d), half_cube)),
        ("spiral", "spiral", lambda d: _spiral(_sparse(d))),
        ("spiral-normal_cdf", "spiral", lambda d: _spiral(_sparse(d), normal_cdf)),
    ):
        for d in (3, 5, 25):
            tasks[f"{prefix}-multinormal-sparse-{d}-{d}-2-2.0"] = (
                family,
                lambda build=build, d=d: build(d),
            )
    for d, dof in ((2, 1), (3, 2), (5, 2)):
        tasks[f"asinh-student-identity-{d}-{d}-{dof}"] = (
            "student",
            lambda d=d, dof=dof: _both(StudentT(d, d, dof=dof), asinh),
        )
    return (
        {name: build for name, (_, build) in tasks.items()},
        {name: family for name, (family, _) in tasks.items()},
    )


#: The 40 tasks of BMI v1 by their BMI ids, in the order of BMI's ``BENCHMARK_TASKS_LIST``;
#: each value builds the sampler (``sampler.mutual_information()`` is the truth).
BMI40_TASKS: dict[str, Callable[[], Sampler]]
#: Task id -> family label for reporting: "gaussian" (multinormal and ``1v1-normal``),
#: "copula" (monotone per-coordinate maps of a Gaussian: normal_cdf, half_cube, wiggly,
#: bimodal), "student" (``student-identity`` and ``asinh-student``), "additive",
#: "swissroll", "spiral".
BMI40_FAMILY: dict[str, str]
BMI40_TASKS, BMI40_FAMILY = _build_tasks()
