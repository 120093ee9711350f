"""The candidate densities of ``estimate_mi``'s ``"auto"`` (:mod:`mist_core.training.auto`).

A candidate is a fitted density of the Gaussianised y, q(y|x) or q(y), with what it cost
(:class:`Density`). There are two kinds: the closed-form copulas of
:mod:`mist_core.estimators.copula` (:func:`copula_densities`), and flows trained in
canonical (CCA) coordinates on the residual of the linear Gaussian fit
(:func:`flow_densities`, :class:`Canonical`), by maximum likelihood with early stopping
that counts the starting point (:func:`train_density`). A third kind mixes the fitted
ones (:func:`mixture_density`): a mixture of densities is a density, so it competes on the
same held-out likelihood. :func:`choose` applies the margin rule to a list of them, simplest
first.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mist_core._rng import seeded
from mist_core.distributions import conditional_transformed_normal, transformed_normal
from mist_core.estimators.copula import EllipticalCopula
from mist_core.training.ensemble import DensityEnsemble

if TYPE_CHECKING:
    from mist_core.training.auto import AutoConfig

__all__ = [
    "FLOW_LAYERS",
    "Canonical",
    "Density",
    "choose",
    "copula_densities",
    "flow_densities",
    "mixture_density",
    "paired_gain",
    "split",
    "train_density",
]

FLOW_LAYERS = {"affine": "affine_autoregressive", "spline": "spline_autoregressive"}
#: A mixture candidate is named this, then its components' names joined by " + ".
MIXTURE = "mixture of "


class Canonical:
    """Canonical (CCA) coordinates of Gaussianised ``[x, y]``, fitted on ``x: [n, dx]``,
    ``y: [n, dy]``: ``x~ = A (x - mx)``, ``y~ = B (y - my)`` are white and
    ``Cov(x~_i, y~_i) = rho_i``; the residual ``r = (y~ - rho x~) / sigma`` is white too."""

    def __init__(self, x: Tensor, y: Tensor, ridge: float = 1e-6) -> None:
        x, y = x.double(), y.double()
        self.mx, self.my = x.mean(0), y.mean(0)
        xc, yc = x - self.mx, y - self.my
        n = len(x)
        wx = _inverse_sqrt(xc.T @ xc / n, ridge)
        wy = _inverse_sqrt(yc.T @ yc / n, ridge)
        u, s, vt = torch.linalg.svd(wx @ (xc.T @ yc / n) @ wy)
        self.a = u.T @ wx  # [dx, dx]
        self.b = vt @ wy  # [dy, dy]
        k = min(x.shape[1], y.shape[1])
        self.rho = torch.zeros(y.shape[1], dtype=torch.float64)
        self.rho[:k] = s[:k].clamp(max=1.0 - 1e-6)
        self.sigma = (1.0 - self.rho**2).sqrt()
        self.k = k
        #: log |d r / d y| = log |det B| - sum log sigma; log |d y~ / d y| = log |det B|
        self.log_det_b = float(torch.linalg.slogdet(self.b)[1])
        self.log_det_residual = self.log_det_b - float(self.sigma.log().sum())

    def x_coords(self, x: Tensor) -> Tensor:
        return (x.double() - self.mx) @ self.a.T

    def y_coords(self, y: Tensor) -> Tensor:
        return (y.double() - self.my) @ self.b.T

    def residual(self, x_c: Tensor, y_c: Tensor) -> Tensor:
        shift = torch.zeros_like(y_c)
        shift[:, : self.k] = x_c[:, : self.k] * self.rho[: self.k]
        return (y_c - shift) / self.sigma


def _inverse_sqrt(cov: Tensor, ridge: float) -> Tensor:
    scale = float(cov.diagonal().mean().clamp_min(1e-12))
    values, vectors = torch.linalg.eigh(cov + ridge * scale * torch.eye(len(cov), dtype=cov.dtype))
    return vectors @ torch.diag(values.clamp_min(1e-12 * scale).rsqrt()) @ vectors.T


@dataclass
class Density:
    """A fitted candidate for q(y|x) or q(y): ``log_prob(x, y) -> [n]`` over Gaussianised
    coordinates, with what its fitting cost."""

    name: str
    log_prob: Callable[[Tensor, Tensor], Tensor]
    seconds: float = 0.0
    epochs: int = 0
    module: nn.Module | None = None
    stopped_by: str = ""
    copula: EllipticalCopula | None = None
    #: a mixture's: log-likelihoods ``[n_valid]`` with weights fitted on other samples
    held_out: Tensor | None = None
    #: a mixture's component weights
    weights: tuple[float, ...] = ()


def train_density(
    module: nn.Module,
    log_prob: Callable[[Tensor, Tensor], Tensor],
    fit: tuple[Tensor, Tensor],
    valid: tuple[Tensor, Tensor],
    config: AutoConfig,
    seed: int,
    max_seconds: float | None = None,
) -> tuple[int, str]:
    """Maximum likelihood with early stopping on ``valid``, counting the starting point;
    the best state is loaded back. Returns the epochs run and what stopped them
    (``"patience"``, ``"epochs"`` or ``"time"``).

    With ``config.average_weights`` a running average of the weights (Polyak averaging:
    an exponential average over about the last two epochs' steps) is validated beside the
    weights themselves every epoch, and early stopping keeps whichever state scored best.
    A flow that overfits within a few epochs jumps between noisy fits; their average
    generalises better."""
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
    generator = torch.Generator().manual_seed(seed)
    n = len(fit[0])
    batch = min(config.batch_size, n)
    params = [p for p in module.parameters() if p.requires_grad]
    average = [p.detach().clone() for p in params] if config.average_weights else []
    steps_per_epoch = max(1, n // batch)
    weight = 1.0 / (2 * steps_per_epoch)  # of the newest step in the running average

    def validate() -> float:
        module.eval()
        with torch.no_grad():
            return float(log_prob(*valid).mean())

    def swap() -> None:  # the weights <-> their running average, in place
        with torch.no_grad():
            for p, a in zip(params, average, strict=True):
                p.data, a.data = a.data, p.data

    best, best_state, waited, start = validate(), copy.deepcopy(module.state_dict()), 0, 0.0
    best_raw = best
    start = time.perf_counter()
    epochs, stopped_by = 0, "epochs"
    for epochs in range(1, config.max_epochs + 1):  # noqa: B007 - returned below
        module.train()
        order = torch.randperm(n, generator=generator)
        for i in range(0, n - batch + 1, batch):
            index = order[i : i + batch]
            loss = -log_prob(fit[0][index], fit[1][index]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average:
                with torch.no_grad():
                    torch._foreach_lerp_(average, [p.detach() for p in params], weight)
        value = validate()
        schedule.step(-value)
        # patience and the rate follow the weights themselves; the state kept is the best
        # seen of the weights and their average
        improved = value > best_raw + 1e-4
        if improved:
            best_raw = value
        if value > best + 1e-4:
            best, best_state = value, copy.deepcopy(module.state_dict())
        if average:
            swap()
            averaged = validate()
            if averaged > best + 1e-4:
                best, best_state = averaged, copy.deepcopy(module.state_dict())
            swap()
        waited = 0 if improved else waited + 1
        if waited >= config.patience:
            stopped_by = "patience"
            break
        if time.perf_counter() - start > (max_seconds or config.max_seconds):
            stopped_by = "time"
            break
    module.load_state_dict(best_state)
    module.eval()
    return epochs, stopped_by


def flow_densities(
    kind: str,
    canon: Canonical,
    fit: tuple[Tensor, Tensor],
    valid: tuple[Tensor, Tensor],
    config: AutoConfig,
    seed: int,
    parts: tuple[str, ...] = ("conditional", "marginal"),
    deadline: float = math.inf,
    trainings_left: int = 1,
) -> dict[str, Density]:
    """Flows of one kind for ``parts`` (q(y|x), q(y)), trained in canonical coordinates.
    With ``config.ensemble > 1`` the q(y|x) flow is that many flows trained side by side and
    read as their mixture (:class:`mist_core.training.ensemble.DensityEnsemble`)."""
    layer = FLOW_LAYERS[kind]
    dx, dy = fit[0].shape[1], fit[1].shape[1]
    with seeded(seed):
        members = [
            conditional_transformed_normal(
                dy,
                dx,
                hidden_dims=config.hidden_dims,
                transform_name="conditional_" + layer,
                normalization=None,
                n_transforms=config.n_transforms,
            )
            for _ in range(config.ensemble)
        ]
        conditional = members[0] if len(members) == 1 else DensityEnsemble(members)
        marginal = transformed_normal(
            dy,
            hidden_dims=config.hidden_dims,
            transform_name=layer,
            normalization=None,
            n_transforms=config.n_transforms,
        )

    def log_conditional(x: Tensor, y: Tensor) -> Tensor:
        x_c, y_c = canon.x_coords(x), canon.y_coords(y)
        r = canon.residual(x_c, y_c).float()
        return conditional.log_prob(r, x_c.float()).double() + canon.log_det_residual

    def log_marginal(x: Tensor, y: Tensor) -> Tensor:
        return marginal.log_prob(canon.y_coords(y).float()).double() + canon.log_det_b

    out = {}
    for part, module, log_prob in (
        ("conditional", conditional, log_conditional),
        ("marginal", marginal, log_marginal),
    ):
        if part not in parts:
            continue
        start = time.perf_counter()
        share = (deadline - start) / max(trainings_left, 1)
        cap = max(1.0, min(config.max_seconds, share))
        trainings_left -= 1
        epochs, stopped_by = train_density(module, log_prob, fit, valid, config, seed, cap)
        seconds = time.perf_counter() - start
        out[part] = Density(f"{kind} flow", log_prob, seconds, epochs, module, stopped_by)
    return out


def copula_densities(copula: EllipticalCopula, seconds: float) -> tuple[Density, Density]:
    def conditional(x: Tensor, y: Tensor) -> Tensor:
        return copula.log_conditional(x, y)

    def marginal(x: Tensor, y: Tensor) -> Tensor:
        return copula.log_marginal_y(y)

    name = "Gaussian copula" if copula.name == "gaussian-copula" else "Student-t copula"
    return Density(name, conditional, seconds), Density(name, marginal, seconds)


def _mixture_weights(scores: Tensor, iterations: int = 200) -> Tensor:
    """Maximum-likelihood weights ``[K]`` of a mixture of densities whose log-densities at
    ``n`` samples are ``scores: [K, n]`` (EM: each step cannot lower the likelihood)."""
    k = scores.shape[0]
    log_w = torch.full((k,), -math.log(k), dtype=torch.float64)
    for _ in range(iterations):
        log_w = torch.log_softmax(scores + log_w[:, None], dim=0).logsumexp(1) - math.log(
            scores.shape[1]
        )
    return log_w


def mixture_density(components: list[Density], valid: tuple[Tensor, Tensor]) -> Density:
    """The mixture of fitted ``components`` (each already trained on the fitting part), its
    weights fitted by maximum likelihood on ``valid``.

    Its :attr:`Density.held_out` holds log-likelihoods of ``valid`` that did not fit the
    weights they are evaluated with (each half of ``valid`` scored with weights fitted on
    the other): what :func:`choose` compares, so that fitting K - 1 weights on the
    validation part does not favour the mixture."""
    scores = torch.stack([d.log_prob(*valid).detach().double() for d in components])  # [K, n]
    log_w = _mixture_weights(scores)
    half = scores.shape[1] // 2
    held_out = torch.cat(
        [
            (scores[:, :half] + _mixture_weights(scores[:, half:])[:, None]).logsumexp(0),
            (scores[:, half:] + _mixture_weights(scores[:, :half])[:, None]).logsumexp(0),
        ]
    )

    def log_prob(x: Tensor, y: Tensor) -> Tensor:
        parts = torch.stack([d.log_prob(x, y).double() for d in components])
        return (parts + log_w[:, None]).logsumexp(0)

    modules = [d.module for d in components if d.module is not None]
    return Density(
        MIXTURE + " + ".join(d.name for d in components),
        log_prob,
        sum(d.seconds for d in components),
        module=nn.ModuleList(modules) if modules else None,
        held_out=held_out,
        weights=tuple(float(w) for w in log_w.exp()),
    )


def paired_gain(
    new: Tensor, old: Tensor, margin: float, min_gain: float
) -> tuple[float, float, bool]:
    """The mean of ``new - old`` (paired per-sample scores ``[n]``), its standard error,
    and whether the gain is real: above both ``margin`` standard errors and ``min_gain``."""
    diff = new - old
    gain = float(diff.mean())
    error = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else math.inf
    return gain, error, math.isfinite(gain) and gain > max(margin * error, min_gain)


def choose(
    candidates: list[Density], valid: tuple[Tensor, Tensor], margin: float, min_gain: float
) -> tuple[int, list[dict]]:
    """Walk the candidates from simple to complex; one replaces the current choice if its
    mean validation log-likelihood is higher by more than ``margin`` standard errors of the
    paired difference. Returns the chosen index and a record per candidate. (A mixture is
    scored by its :attr:`Density.held_out` log-likelihoods.)"""
    scores = [
        density.held_out
        if density.held_out is not None
        else density.log_prob(*valid).detach().double()
        for density in candidates
    ]
    chosen = 0
    records = []
    for index, score in enumerate(scores):
        record = {
            "name": candidates[index].name,
            "valid_log_likelihood": float(score.mean()),
            "seconds": round(candidates[index].seconds, 3),
        }
        if candidates[index].epochs:
            record["epochs"] = candidates[index].epochs
        if candidates[index].weights:
            record["weights"] = [round(w, 4) for w in candidates[index].weights]
        if index > 0:
            gain, error, better = paired_gain(score, scores[chosen], margin, min_gain)
            record["gain_over_choice"] = gain
            record["gain_std_error"] = error
            if better:
                chosen = index
        records.append(record)
    return chosen, records


def split(index: Tensor, valid_fraction: float) -> tuple[Tensor, Tensor]:
    """``index`` cut into a fitting part and a validation part (the first ``valid_fraction``)."""
    n_valid = max(2, int(round(len(index) * valid_fraction)))
    return index[n_valid:], index[:n_valid]
