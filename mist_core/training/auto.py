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
   (Optionally, early stopping also looks at a running average of each flow's weights,
   and each flow candidate of q(y|x) is a small ensemble of flows read as their mixture:
   ``AutoConfig.average_weights``, ``AutoConfig.ensemble``.)
   Last, the mixture of that part's candidates (copula and flows), its weights fitted on
   the validation part and scored there by halves (each half with weights fitted on the
   other), so fitting the weights does not favour it.
3. For q(y|x) and for q(y) separately, a more complex candidate replaces the current one
   only if its mean validation log-likelihood is higher by more than ``margin`` standard
   errors of the paired difference (and by ``min_gain`` nats).
4. If the copula won both, the estimate is its closed-form MI refitted on all samples, less
   its finite-sample bias. Otherwise the chosen densities are refitted on each fold's
   complement and the mean of :math:`\log q(y|x) - \log q(y)` is taken over every
   held-out fold (cross-fitting), as far as ``time_budget`` allows.
5. On the same held-out folds, the chosen q(y|x) also gives a lower bound on the MI, the
   contrastive (InfoNCE) bound with :math:`\log q(y|x)` as its critic
   (:mod:`mist_core.training.contrastive`). Where q(y|x) misses structure that q(y) cannot
   make up for, the DoE estimate falls below the truth, and the bound, which keeps the
   part of q(y|x)'s error its own marginal shares, can sit above it. A lower bound above
   an estimate by more than ``margin`` standard errors of their paired difference shows
   the estimate is too low, and the bound is reported instead (``details["read_out"]``).

What it does not do: compare coordinate systems. A density of the Gaussianised y and one of
the raw y differ by the Gaussianiser's Jacobian, which for an empirical CDF is a noisy
step function, so their held-out likelihoods cannot be compared fairly; the single
estimators (``estimator="doe"``, ``standardize=True``) remain for raw coordinates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mist_core._rng import seeded_permutation
from mist_core.estimators.base import MIEstimator, Terms
from mist_core.estimators.copula import (
    EllipticalCopula,
    fit_gaussian_copula,
    fit_student_copula,
)
from mist_core.marginals import Gaussianizer
from mist_core.training.candidates import (
    FLOW_LAYERS,
    MIXTURE,
    Canonical,
    Density,
    choose,
    copula_densities,
    flow_densities,
    mixture_density,
    paired_gain,
    split,
)
from mist_core.training.contrastive import contrastive_terms

__all__ = ["AutoConfig", "AutoDoE", "AutoOutcome", "auto_estimate"]


@dataclass(frozen=True)
class AutoConfig:
    """What :func:`auto_estimate` tries, and how hard.

    Args:
        flows: flow candidates, from ``"affine"`` and ``"spline"`` (empty: closed forms only).
        mixture: with flows, also the mixture of every candidate of a part (the copula's and
            the flows'), its weights fitted on the validation part.
        student: try the Student-t copula.
        hidden_dims, n_transforms: the flows' conditioner widths and layer count.
        ensemble: flows of q(y|x) trained from different initialisations, side by side, for
            each flow candidate, which is then their equal-weight mixture (a deep ensemble,
            :mod:`mist_core.training.ensemble`; 1, the default: one flow).
        average_weights: also validate a running average of each flow's weights (over
            about two epochs of steps) and keep it where it scores better
            (:func:`mist_core.training.candidates.train_density`).

            Both raise the held-out likelihood of q(y|x) where it is hard to fit (on BMI's
            spiral tasks at N = 10,000, by about 0.01-0.03 nats each), but they are off by
            default: on all 40 BMI tasks (5 seeds, ``ensemble=2, average_weights=True``)
            the MAE did not improve (0.035 against 0.034; one spiral task more within 0.1
            nats, one fewer), and a call took 1.5-1.6x as long (``bench/README.md``,
            BMI-40, variant ``auto-ensemble``).
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
        contrasts: after cross-fitting, held-out x's each held-out sample is contrasted
            with in the contrastive lower bound read from the chosen q(y|x)
            (:mod:`mist_core.training.contrastive`; the bound is never above log of this);
            0: no bound.
    """

    flows: tuple[str, ...] = ("affine", "spline")
    mixture: bool = True
    student: bool = True
    hidden_dims: tuple[int, ...] = (64, 64)
    n_transforms: int = 2
    ensemble: int = 1
    average_weights: bool = False
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
    contrasts: int = 256

    def __post_init__(self) -> None:
        unknown = [name for name in self.flows if name not in FLOW_LAYERS]
        if unknown:
            raise ValueError(f"unknown flows {unknown}; valid: {', '.join(FLOW_LAYERS)}")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1 (1: a single flow), got {self.ensemble}")
        if self.contrasts == 1 or self.contrasts < 0:
            raise ValueError(f"contrasts must be 0 (no bound) or >= 2, got {self.contrasts}")
        if self.folds < 1:
            raise ValueError(f"folds must be >= 1, got {self.folds}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must lie in (0, 1), got {self.valid_fraction}")


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
    ``log q(y|x) - log q(y)`` per sample (nothing to train): the DoE's terms, also where
    :func:`auto_estimate` read out the contrastive bound instead (``details["read_out"]``)."""

    closed_form = True

    def __init__(
        self,
        gaussianize_x: Callable[[Tensor], Tensor],
        gaussianize_y: Callable[[Tensor], Tensor],
        conditional: Density,
        marginal: Density,
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


def _label(conditional: Density, marginal: Density) -> str:
    if conditional.name == marginal.name:
        return conditional.name
    return f"{conditional.name} q(y|x), {marginal.name} q(y)"


_COPULA_FITS: dict[str, Callable[[Tensor, Tensor], EllipticalCopula]] = {
    "Gaussian copula": fit_gaussian_copula,
    "Student-t copula": fit_student_copula,
}


def _refit(
    chosen: tuple[str, str],
    z: tuple[Tensor, Tensor],
    fit_index: Tensor,
    valid_index: Tensor,
    config: AutoConfig,
    seed: int,
    deadline: float = math.inf,
) -> tuple[Density, Density]:
    """The chosen q(y|x) and q(y) (by candidate name) fitted again on ``fit_index``; a
    mixture's components are refitted and its weights fitted again on ``valid_index``."""
    fit = (z[0][fit_index], z[1][fit_index])
    valid = (z[0][valid_index], z[1][valid_index])
    parts = ("conditional", "marginal")
    needed = {  # part -> the names of the densities it is made of
        part: name.removeprefix(MIXTURE).split(" + ") if name.startswith(MIXTURE) else [name]
        for part, name in zip(parts, chosen, strict=True)
    }
    found: dict[tuple[str, str], Density] = {}
    for name in {n for p in parts for n in needed[p] if n in _COPULA_FITS}:
        pair = copula_densities(_COPULA_FITS[name](*fit), 0.0)  # fitted once for both parts
        for part, density in zip(parts, pair, strict=True):
            found[part, name] = density
    flows = sorted({n.split()[0] for p in parts for n in needed[p] if n not in _COPULA_FITS})
    trainings = sum(1 for p in parts for n in needed[p] if n not in _COPULA_FITS)
    canon = Canonical(*fit) if flows else None
    for kind in flows:
        kind_parts = tuple(p for p in parts if f"{kind} flow" in needed[p])
        assert canon is not None
        trained = flow_densities(
            kind, canon, fit, valid, config, seed, kind_parts, deadline, trainings
        )
        trainings -= len(kind_parts)
        found.update({(p, f"{kind} flow"): density for p, density in trained.items()})
    out = []
    for part in parts:
        densities = [found[part, name] for name in needed[part]]
        out.append(densities[0] if len(densities) == 1 else mixture_density(densities, valid))
    return out[0], out[1]


def _candidates(
    fit: tuple[Tensor, Tensor],
    valid: tuple[Tensor, Tensor],
    config: AutoConfig,
    seed: int,
    deadline: float,
) -> tuple[Density, list[Density], list[Density], list[dict]]:
    """The copula family (chosen on the joint likelihood log q(x, y): its closed-form MI
    needs q(y|x) and q(y) from one family), then the candidates for q(y|x) and for q(y):
    that family's, then each flow's (the flows may take half the time budget)."""
    copulas: list[Density] = []
    for name, fit_copula in _COPULA_FITS.items():
        if name == "Student-t copula" and not config.student:
            continue
        start = time.perf_counter()
        fitted = fit_copula(*fit)
        copulas.append(Density(name, fitted.log_joint, time.perf_counter() - start, copula=fitted))
    which, records = choose(copulas, valid, config.margin, config.min_gain)
    family = copulas[which]
    assert family.copula is not None
    conditional, marginal = copula_densities(family.copula, family.seconds)
    conditionals, marginals = [conditional], [marginal]
    if config.flows:
        canon = Canonical(*fit)
        half = deadline - config.time_budget / 2
        for index, kind in enumerate(config.flows):
            left = 2 * (len(config.flows) - index)
            flows = flow_densities(
                kind, canon, fit, valid, config, seed, deadline=half, trainings_left=left
            )
            conditionals.append(flows["conditional"])
            marginals.append(flows["marginal"])
        if config.mixture:
            conditionals.append(mixture_density(list(conditionals), valid))
            marginals.append(mixture_density(list(marginals), valid))
    return family, conditionals, marginals, records


def _cross_fit(
    chosen: tuple[Density, Density],
    z: tuple[Tensor, Tensor],
    folds: list[Tensor],
    config: AutoConfig,
    seed: int,
    deadline: float,
) -> tuple[Tensor, tuple[Tensor, int] | None, Density, Density, str]:
    """``log q(y|x) - log q(y)`` on every held-out fold ``[n]`` (the first fold's densities
    are ``chosen``; the others' are refitted on their complements, while time allows), the
    contrastive bound's terms on the same folds with the same q(y|x) and the smallest
    number of samples a set held, K (None with ``config.contrasts == 0``), the last fold's
    densities, and a phrase saying what was evaluated."""
    conditional, marginal = chosen
    names = (conditional.name, marginal.name)
    fold_cost = conditional.seconds + marginal.seconds
    zx, zy = z
    pieces, bounds = [], []
    for k, test in enumerate(folds if config.folds > 1 else folds[:1]):
        if k > 0 and time.perf_counter() + fold_cost > deadline:
            break  # out of time: the folds done so far
        if k > 0:
            rest = torch.cat([f for j, f in enumerate(folds) if j != k])
            fit_index, valid_index = split(rest, config.valid_fraction)
            conditional, marginal = _refit(
                names, z, fit_index, valid_index, config, seed + k, deadline
            )
        with torch.no_grad():
            pieces.append(
                conditional.log_prob(zx[test], zy[test]) - marginal.log_prob(zx[test], zy[test])
            )
        if config.contrasts:
            start = time.perf_counter()
            x, y = zx[test], zy[test]
            bounds.append(
                contrastive_terms(conditional.log_prob, x, y, config.contrasts, seed + k)
            )
            if k == 0:
                fold_cost += time.perf_counter() - start
    if config.folds == 1:
        where = "held-out test split"
    elif len(pieces) == config.folds:
        where = f"{config.folds}-fold cross-fitting"
    else:
        where = (
            f"{len(pieces)} of {config.folds} cross-fitting folds (time budget of "
            f"{config.time_budget:g} s)"
        )
    smallest = min(len(test) for test in folds[: len(pieces)])
    bound = (torch.cat(bounds), min(config.contrasts, smallest)) if bounds else None
    return torch.cat(pieces), bound, conditional, marginal, where


def _read_out(
    doe: Tensor, bound: tuple[Tensor, int] | None, config: AutoConfig, details: dict
) -> tuple[Tensor, bool]:
    """The DoE terms ``[n]``, or the contrastive bound's ``bound = (terms [n], K)`` on the
    same samples where it is higher by more than ``margin`` standard errors of the paired
    difference (a lower bound above an estimate shows the estimate is too low). Records
    both in ``details``."""
    if bound is None:
        return doe, False
    terms, contrasts = bound
    gain, error, better = paired_gain(terms, doe, config.margin, config.min_gain)
    details.update(
        contrastive_bound=float(terms.mean()),
        contrastive_gain=gain,
        contrastive_gain_std_error=error,
        contrasts=contrasts,
    )
    return (terms, True) if better else (doe, False)


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
    fit_index, valid_index = split(train, config.valid_fraction)
    gx, gy = Gaussianizer(x), Gaussianizer(y)
    zx, zy = gx(x).double(), gy(y).double()
    fit, valid = (zx[fit_index], zy[fit_index]), (zx[valid_index], zy[valid_index])

    family, conditionals, marginals, records_joint = _candidates(
        fit, valid, config, seed, deadline
    )
    which_c, records_c = choose(conditionals, valid, config.margin, config.min_gain)
    which_m, records_m = choose(marginals, valid, config.margin, config.min_gain)
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
    contrastive = False
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
        conditional, marginal = copula_densities(copula, 0.0)
        n_test = n
    else:
        terms, bound, conditional, marginal, details["evaluated_on"] = _cross_fit(
            (conditional, marginal), (zx, zy), folds, config, seed, deadline
        )
        details["doe_mi"] = float(terms.mean())
        terms, contrastive = _read_out(terms, bound, config, details)
        mi = float(terms.mean())
        n_test = len(terms)
    std_error = float(terms.std() / math.sqrt(len(terms))) if len(terms) > 1 else math.nan
    details["reason"] = _reason(conditional.name, marginal.name, records_c, records_m, closed)
    label = _label(conditional, marginal)
    model = AutoDoE(gx, gy, conditional, marginal)
    warnings = _budget_warnings(conditional, marginal, conditionals + marginals, config)
    details["read_out"] = (
        "contrastive bound"
        if contrastive
        else "closed form"
        if closed
        else "difference of entropies"
    )
    if contrastive:
        label = f"{conditional.name} q(y|x), contrastive bound"
        warnings += _explain_bound(details, mi)
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
        estimator=label,
        model=model,
        details=details,
        n_train=n if closed else len(train),
        n_test=n_test,
        warnings=warnings,
    )


def _explain_bound(details: dict, mi: float) -> tuple[str, ...]:
    """Says in ``details["reason"]`` why the contrastive bound is the estimate; a warning
    where the bound is near its ceiling, log K."""
    details["reason"] += (
        "; the contrastive lower bound read from that q(y|x) was above the difference of "
        f"entropies by {details['contrastive_gain']:.3f} +/- "
        f"{details['contrastive_gain_std_error']:.3f} nats, so the estimate is the bound"
    )
    if mi <= math.log(details["contrasts"]) - 0.5:
        return ()
    return (
        f"the contrastive bound ({mi:.2f} nats) is close to its ceiling, log of the "
        f"{details['contrasts']} samples each is contrasted with: the MI may be higher; "
        "raise AutoConfig.contrasts",
    )


def _near_singular(corr: Tensor) -> bool:
    """Whether a fitted correlation matrix is singular but for its jitter."""
    return float(torch.linalg.eigvalsh(corr)[0]) < 1e-6


def _budget_warnings(
    conditional: Density, marginal: Density, candidates: list[Density], config: AutoConfig
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
        what = " and ".join(cut)
        verb = "were" if len(cut) > 1 else "was"
        found.append(
            f"the {what} stopped at the budget before converging and {verb} not chosen; with "
            "more time a flow might have been: raise AutoConfig.max_seconds, max_epochs or "
            "time_budget (a loaded machine runs fewer epochs in the same time)"
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
