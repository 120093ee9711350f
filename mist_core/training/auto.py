r"""``estimate_mi(x, y)`` without choosing an estimator: :func:`auto_estimate`.

The difference-of-entropies estimate :math:`\hat I = E[\log q(y|x) - \log q(y)]` errs by
:math:`KL(p(y)\|q(y)) - KL(p(y|x)\|q(y|x))`, so the best q(y|x) and the best q(y) are the
ones with the highest held-out log-likelihood, each chosen on its own. That criterion
needs no truth, and it is what :func:`auto_estimate` uses.

1. Every coordinate of x and y is Gaussianised (:class:`mist_core.marginals.Gaussianizer`,
   fitted on all samples; MI does not change). All candidates are densities of the
   Gaussianised y, so their log-likelihoods compare directly.
2. The samples are cut into ``folds``; the first fold's training part is cut again into a
   fitting and a validation part. The copula family, Gaussian or Student-t in closed form
   (:mod:`mist_core.estimators.copula`), is chosen on the joint likelihood log q(x, y)
   (its closed-form MI needs both densities from one family). Then affine and spline
   autoregressive flows are trained, in canonical (CCA) coordinates on the residual of the
   linear Gaussian fit: an untrained flow *is* that fit, and early stopping on the
   validation part, counting the starting point, never leaves it for something worse.
3. For q(y|x) and for q(y) separately, a more complex candidate replaces the current one
   only if its mean validation log-likelihood is higher by more than ``margin`` standard
   errors of the paired difference (and by ``min_gain`` nats).
4. If the copula won both, the estimate is its closed-form MI refitted on all samples, less
   its finite-sample bias. Otherwise the chosen densities are refitted on each fold's
   complement and the mean of :math:`\log q(y|x) - \log q(y)` is taken over every
   held-out fold (cross-fitting), as far as ``time_budget`` allows.

What it does not do: compare coordinate systems. A density of the Gaussianised y and one of
the raw y differ by the Gaussianiser's Jacobian, which for an empirical CDF is a noisy
step function, so their held-out likelihoods cannot be compared fairly; the single
estimators (``estimator="doe"``, ``standardize=True``) remain for raw coordinates.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mist_core._rng import seeded, seeded_permutation
from mist_core.distributions import conditional_transformed_normal, transformed_normal
from mist_core.estimators.base import MIEstimator, Terms
from mist_core.estimators.copula import (
    EllipticalCopula,
    fit_gaussian_copula,
    fit_student_copula,
)
from mist_core.marginals import Gaussianizer

__all__ = ["AutoConfig", "AutoDoE", "AutoOutcome", "auto_estimate"]

_FLOW_LAYERS = {"affine": "affine_autoregressive", "spline": "spline_autoregressive"}


@dataclass(frozen=True)
class AutoConfig:
    """What :func:`auto_estimate` tries, and how hard.

    Args:
        flows: flow candidates, from ``"affine"`` and ``"spline"`` (empty: closed forms only).
        student: try the Student-t copula.
        hidden_dims, n_transforms: the flows' conditioner widths and layer count.
        lr, weight_decay, batch_size, max_epochs, patience: the flows' training (AdamW; the rate
            halves after 3 epochs without a better validation likelihood; training stops
            after ``patience`` such epochs).
        valid_fraction: share of the training split held out to choose and early-stop.
        folds: cross-fitting folds for an estimate that needs held-out data (1: one split
            of ``test_fraction``).
        margin: standard errors by which a more complex density must win.
        min_gain: nats a sample by which it must win at least (two nearly equal densities,
            such as a Student-t copula with very many degrees of freedom and the Gaussian
            copula, differ by far less than their noise, and their paired difference has a
            tiny standard error).
        max_seconds: wall-clock cap per flow.
        time_budget: seconds for the whole call: the flows share what is left of it, and
            cross-fitting stops at the folds that fit in it (the estimate then averages
            fewer held-out samples; ``details["evaluated_on"]`` says how many folds).
    """

    flows: tuple[str, ...] = ("affine", "spline")
    student: bool = True
    hidden_dims: tuple[int, ...] = (64, 64)
    n_transforms: int = 2
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 300
    patience: int = 12
    valid_fraction: float = 0.2
    folds: int = 5
    margin: float = 2.0
    min_gain: float = 2e-3
    max_seconds: float = 40.0
    time_budget: float = 100.0

    def __post_init__(self) -> None:
        unknown = [name for name in self.flows if name not in _FLOW_LAYERS]
        if unknown:
            raise ValueError(f"unknown flows {unknown}; valid: {', '.join(_FLOW_LAYERS)}")
        if self.folds < 1:
            raise ValueError(f"folds must be >= 1, got {self.folds}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must lie in (0, 1), got {self.valid_fraction}")


class _Canonical:
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
class _Density:
    """A fitted candidate for q(y|x) or q(y): ``log_prob(x, y) -> [n]`` over Gaussianised
    coordinates, with what its fitting cost."""

    name: str
    log_prob: Callable[[Tensor, Tensor], Tensor]
    seconds: float = 0.0
    epochs: int = 0
    module: nn.Module | None = None
    stopped_by: str = ""
    copula: EllipticalCopula | None = None


def _train_flow(
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
    (``"patience"``, ``"epochs"`` or ``"time"``)."""
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
    generator = torch.Generator().manual_seed(seed)
    n = len(fit[0])
    batch = min(config.batch_size, n)

    def validate() -> float:
        module.eval()
        with torch.no_grad():
            return float(log_prob(*valid).mean())

    best, best_state, waited, start = validate(), copy.deepcopy(module.state_dict()), 0, 0.0
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
        value = validate()
        schedule.step(-value)
        if value > best + 1e-4:
            best, best_state, waited = value, copy.deepcopy(module.state_dict()), 0
        else:
            waited += 1
        if waited >= config.patience:
            stopped_by = "patience"
            break
        if time.perf_counter() - start > (max_seconds or config.max_seconds):
            stopped_by = "time"
            break
    module.load_state_dict(best_state)
    module.eval()
    return epochs, stopped_by


def _flow_densities(
    kind: str,
    canon: _Canonical,
    fit: tuple[Tensor, Tensor],
    valid: tuple[Tensor, Tensor],
    config: AutoConfig,
    seed: int,
    parts: tuple[str, ...] = ("conditional", "marginal"),
    deadline: float = math.inf,
    trainings_left: int = 1,
) -> dict[str, _Density]:
    """Flows of one kind for ``parts`` (q(y|x), q(y)), trained in canonical coordinates."""
    layer = _FLOW_LAYERS[kind]
    dx, dy = fit[0].shape[1], fit[1].shape[1]
    with seeded(seed):
        conditional = conditional_transformed_normal(
            dy,
            dx,
            hidden_dims=config.hidden_dims,
            transform_name="conditional_" + layer,
            normalization=None,
            n_transforms=config.n_transforms,
        )
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
        epochs, stopped_by = _train_flow(module, log_prob, fit, valid, config, seed, cap)
        seconds = time.perf_counter() - start
        out[part] = _Density(f"{kind} flow", log_prob, seconds, epochs, module, stopped_by)
    return out


def _copula_densities(copula: EllipticalCopula, seconds: float) -> tuple[_Density, _Density]:
    def conditional(x: Tensor, y: Tensor) -> Tensor:
        return copula.log_conditional(x, y)

    def marginal(x: Tensor, y: Tensor) -> Tensor:
        return copula.log_marginal_y(y)

    name = "Gaussian copula" if copula.name == "gaussian-copula" else "Student-t copula"
    return _Density(name, conditional, seconds), _Density(name, marginal, seconds)


def _choose(
    candidates: list[_Density], valid: tuple[Tensor, Tensor], margin: float, min_gain: float
) -> tuple[int, list[dict]]:
    """Walk the candidates from simple to complex; one replaces the current choice if its
    mean validation log-likelihood is higher by more than ``margin`` standard errors of the
    paired difference. Returns the chosen index and a record per candidate."""
    scores = [density.log_prob(*valid).detach().double() for density in candidates]
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
        if index > 0:
            diff = score - scores[chosen]
            gain = float(diff.mean())
            error = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else math.inf
            record["gain_over_choice"] = gain
            record["gain_std_error"] = error
            if math.isfinite(gain) and gain > max(margin * error, min_gain):
                chosen = index
        records.append(record)
    return chosen, records


@dataclass
class AutoOutcome:
    """What :func:`auto_estimate` found: the estimate, its standard error, the per-sample
    terms it averaged ``[n]``, the chosen densities as a module, and why."""

    mi: float
    std_error: float
    log_ratio: Tensor
    estimator: str
    model: AutoDoE
    details: dict = field(default_factory=dict)
    n_train: int = 0
    n_test: int = 0
    warnings: tuple[str, ...] = ()


class AutoDoE(MIEstimator):
    """The densities :func:`auto_estimate` chose, as an estimator: ``terms(x, y)`` maps raw
    ``x: [N, D_x]``, ``y: [N, D_y]`` through the fitted Gaussianisers (for a discrete y:
    its class map) and returns
    ``log q(y|x) - log q(y)`` per sample (nothing to train)."""

    closed_form = True

    def __init__(
        self,
        gaussianize_x: Callable[[Tensor], Tensor],
        gaussianize_y: Callable[[Tensor], Tensor],
        conditional: _Density,
        marginal: _Density,
        y_dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self.gaussianize_x, self.gaussianize_y = gaussianize_x, gaussianize_y
        self.y_dtype = y_dtype
        self.conditional, self.marginal = conditional, marginal
        self.infomax_gradient = {"x": False, "y": False}
        modules = [d.module for d in (conditional, marginal) if d.module is not None]
        self.flows = nn.ModuleList(modules)

    def fit(self, x: Tensor, y: Tensor) -> AutoDoE:
        return self  # fitted by auto_estimate

    def terms(self, x: Tensor, y: Tensor) -> Terms:
        with torch.no_grad():
            zx, zy = self.gaussianize_x(x).double(), self.gaussianize_y(y).to(self.y_dtype)
            log_cond = self.conditional.log_prob(zx, zy)
            log_ratio = log_cond - self.marginal.log_prob(zx, zy)
        return Terms(loss=-log_cond.mean().to(x.dtype), log_ratio=log_ratio.to(x.dtype))


def _label(conditional: _Density, marginal: _Density) -> str:
    if conditional.name == marginal.name:
        return conditional.name
    return f"{conditional.name} q(y|x), {marginal.name} q(y)"


_COPULA_FITS: dict[str, Callable[[Tensor, Tensor], EllipticalCopula]] = {
    "Gaussian copula": fit_gaussian_copula,
    "Student-t copula": fit_student_copula,
}


def _split(index: Tensor, valid_fraction: float) -> tuple[Tensor, Tensor]:
    """``index`` cut into a fitting part and a validation part (the first ``valid_fraction``)."""
    n_valid = max(2, int(round(len(index) * valid_fraction)))
    return index[n_valid:], index[:n_valid]


def _refit(
    chosen: tuple[str, str],
    z: tuple[Tensor, Tensor],
    fit_index: Tensor,
    valid_index: Tensor,
    config: AutoConfig,
    seed: int,
    deadline: float = math.inf,
) -> tuple[_Density, _Density]:
    """The chosen q(y|x) and q(y) (by candidate name) fitted again on ``fit_index``."""
    fit = (z[0][fit_index], z[1][fit_index])
    valid = (z[0][valid_index], z[1][valid_index])
    found: dict[str, _Density] = {}
    for part, name in zip(("conditional", "marginal"), chosen, strict=True):
        if name in _COPULA_FITS:
            pair = _copula_densities(_COPULA_FITS[name](*fit), 0.0)
            found[part] = pair[0] if part == "conditional" else pair[1]
    flows = {name.split()[0] for name in chosen if name not in _COPULA_FITS}
    if flows:
        canon = _Canonical(*fit)
        for kind in sorted(flows):
            parts = tuple(
                p
                for p, n in zip(("conditional", "marginal"), chosen, strict=True)
                if n.startswith(kind)
            )
            found.update(
                _flow_densities(kind, canon, fit, valid, config, seed, parts, deadline, len(parts))
            )
    return found["conditional"], found["marginal"]


def auto_estimate(
    x: Tensor, y: Tensor, *, test_fraction: float, seed: int, config: AutoConfig | None = None
) -> AutoOutcome:
    """Choose densities for ``x: [N, D_x]``, ``y: [N, D_y]`` by held-out likelihood and
    estimate :math:`I(X;Y)` in nats with them (see the module docstring).

    With ``config.folds > 1`` the samples are cut into that many folds: the choice is made
    on the first fold's training part, and an estimate that needs held-out data is
    cross-fitted (every fold evaluated by densities fitted on the others); with one fold,
    ``test_fraction`` of the samples are held out instead."""
    config = config or AutoConfig()
    deadline = time.perf_counter() + config.time_budget
    n = len(x)
    order = seeded_permutation(n, seed)
    if config.folds > 1:
        folds = list(torch.tensor_split(order, config.folds))
    else:
        n_test = int(round(n * test_fraction))
        folds = [order[:n_test], order[n_test:]]
    train = torch.cat(folds[1:])
    fit_index, valid_index = _split(train, config.valid_fraction)
    gx, gy = Gaussianizer(x), Gaussianizer(y)
    zx, zy = gx(x).double(), gy(y).double()
    fit, valid = (zx[fit_index], zy[fit_index]), (zx[valid_index], zy[valid_index])

    # The copula family is chosen on the joint likelihood log q(x, y): its closed-form MI
    # needs q(y|x) and q(y) from one family.
    copulas: list[_Density] = []
    for name, fit_copula in _COPULA_FITS.items():
        if name == "Student-t copula" and not config.student:
            continue
        start = time.perf_counter()
        fitted = fit_copula(*fit)
        seconds = time.perf_counter() - start
        copulas.append(_Density(name, fitted.log_joint, seconds, copula=fitted))
    which, records_joint = _choose(copulas, valid, config.margin, config.min_gain)
    family = copulas[which]
    assert family.copula is not None
    conditional, marginal = _copula_densities(family.copula, family.seconds)
    conditionals: list[_Density] = [conditional]
    marginals: list[_Density] = [marginal]
    if config.flows:
        canon = _Canonical(*fit)
        for index, kind in enumerate(config.flows):
            # the selection's flows may take half the budget; the cross-fitting the rest
            left = 2 * (len(config.flows) - index)
            half = deadline - config.time_budget / 2
            flows = _flow_densities(
                kind, canon, fit, valid, config, seed, deadline=half, trainings_left=left
            )
            conditionals.append(flows["conditional"])
            marginals.append(flows["marginal"])

    which_c, records_c = _choose(conditionals, valid, config.margin, config.min_gain)
    which_m, records_m = _choose(marginals, valid, config.margin, config.min_gain)
    conditional, marginal = conditionals[which_c], marginals[which_m]
    details: dict = {
        "marginal_map": "gaussianize",
        "conditional": conditional.name,
        "marginal": marginal.name,
        "candidates_copula": records_joint,
        "candidates_conditional": records_c,
        "candidates_marginal": records_m,
        "n_fit": len(fit_index),
        "n_valid": len(valid_index),
    }
    closed = conditional.module is None and conditional.name == marginal.name
    if closed:
        start = time.perf_counter()
        copula = _COPULA_FITS[conditional.name](zx, zy)  # refitted on every sample
        terms = copula.log_conditional(zx, zy) - copula.log_marginal_y(zy)
        mi = copula.mi()
        details.update(
            evaluated_on="all samples (closed form)",
            plug_in_mi=copula.plug_in_mi(),
            bias_correction=copula.bias(),
            refit_seconds=round(time.perf_counter() - start, 3),
        )
        if not math.isinf(copula.dof):
            details["dof"] = copula.dof
        conditional, marginal = _copula_densities(copula, 0.0)
        n_test = n
    else:
        chosen = (conditional.name, marginal.name)
        fold_cost = conditional.seconds + marginal.seconds
        pieces = []
        for k, test in enumerate(folds if config.folds > 1 else folds[:1]):
            if k > 0 and time.perf_counter() + fold_cost > deadline:
                break  # out of time: the folds done so far
            if k > 0:
                rest = torch.cat([f for j, f in enumerate(folds) if j != k])
                conditional, marginal = _refit(
                    chosen,
                    (zx, zy),
                    *_split(rest, config.valid_fraction),
                    config,
                    seed + k,
                    deadline,
                )
            with torch.no_grad():
                pieces.append(
                    conditional.log_prob(zx[test], zy[test])
                    - marginal.log_prob(zx[test], zy[test])
                )
        terms = torch.cat(pieces)
        mi = float(terms.mean())
        if config.folds == 1:
            details["evaluated_on"] = "held-out test split"
        elif len(pieces) == config.folds:
            details["evaluated_on"] = f"{config.folds}-fold cross-fitting"
        else:
            details["evaluated_on"] = (
                f"{len(pieces)} of {config.folds} cross-fitting folds (time budget of "
                f"{config.time_budget:g} s)"
            )
        n_test = len(terms)
    std_error = float(terms.std() / math.sqrt(len(terms))) if len(terms) > 1 else math.nan
    details["reason"] = _reason(conditional.name, marginal.name, records_c, records_m, closed)
    model = AutoDoE(gx, gy, conditional, marginal)
    warnings = _budget_warnings(conditional, marginal, conditionals + marginals, config)
    if _near_singular(family.copula.corr):
        warnings += (
            "x and y (or coordinates within them) are nearly deterministic functions of "
            "one another: the MI is unbounded, and this number only reflects the numerical "
            "floor of the fitted correlations; drop duplicated coordinates or add the noise "
            "the measurement really has",
        )
    return AutoOutcome(
        mi=mi,
        std_error=std_error,
        log_ratio=terms.detach().float(),
        estimator=_label(conditional, marginal),
        model=model,
        details=details,
        n_train=n if closed else len(train),
        n_test=n_test,
        warnings=warnings,
    )


def _near_singular(corr: Tensor) -> bool:
    """Whether a fitted correlation matrix is singular but for its jitter."""
    return float(torch.linalg.eigvalsh(corr)[0]) < 1e-6


def _budget_warnings(
    conditional: _Density, marginal: _Density, candidates: list[_Density], config: AutoConfig
) -> tuple[str, ...]:
    """A chosen flow, or a flow that lost, stopped by its budget while still improving."""
    found = [
        f"the {which} density ({density.name}) was still improving when its "
        f"{'time' if density.stopped_by == 'time' else 'epoch'} budget ran out "
        f"({config.max_seconds:g} s, {config.max_epochs} epochs): the estimate may be too "
        "low; raise AutoConfig.max_seconds or max_epochs (or time_budget)"
        for which, density in (("q(y|x)", conditional), ("q(y)", marginal))
        if density.stopped_by in ("time", "epochs")
    ]
    cut = sorted(
        {c.name for c in candidates if c.stopped_by in ("time", "epochs")}
        - {conditional.name, marginal.name}
    )
    if cut:
        found.append(
            f"the {' and '.join(cut)} stopped at its budget before it converged and was not "
            "chosen; with more time it might have been: raise AutoConfig.max_seconds, "
            "max_epochs or time_budget (a loaded machine runs fewer epochs in the same time)"
        )
    return tuple(found)


def _reason(
    conditional: str, marginal: str, records_c: list[dict], records_m: list[dict], closed: bool
) -> str:
    """One sentence on why: the held-out log-likelihood of each choice against the simplest."""

    def part(what: str, chosen: str, records: list[dict]) -> str:
        base = records[0]
        best = next(r for r in records if r["name"] == chosen)
        if best is base:
            return f"{what}: {chosen} (no candidate beat it by 2 standard errors)"
        gain = best["valid_log_likelihood"] - base["valid_log_likelihood"]
        return (
            f"{what}: {chosen} ({gain:+.3f} nats a sample of held-out log-likelihood "
            f"over {base['name']})"
        )

    text = part("q(y|x)", conditional, records_c) + "; " + part("q(y)", marginal, records_m)
    if closed:
        text += "; closed-form MI refitted on all samples, less its finite-sample bias"
    return text
