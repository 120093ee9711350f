r"""``estimate_mi``'s ``"auto"`` for a discrete target: DoE with a classifier.

When the rows of ``y`` take few distinct values (class labels, counts), a density of y has
atoms and the flows and copulas of :mod:`mist_core.training.auto` do not apply. The
difference of entropies still does, with the right densities:
:math:`\hat I = E[\log q(y|x) - \log \hat p(y)]`, where :math:`q(y|x)` is a classifier
and :math:`\hat p(y)` the class frequencies of the fitting samples. The classifier is
chosen the same way, by held-out log-likelihood with the same margin rule: multinomial
logistic regression on the Gaussianised x, then a small MLP. The estimate is
cross-fitted, and it can never exceed :math:`H(Y)` by more than noise.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch
from torch import Tensor, nn

from mist_core._rng import seeded, seeded_permutation
from mist_core.marginals import Gaussianizer
from mist_core.training.auto import AutoConfig, AutoDoE, AutoOutcome
from mist_core.training.candidates import Density, choose, split, train_density

__all__ = ["MAX_CLASSES", "discrete_codes", "discrete_estimate"]

#: At most this many distinct values (and fewer than N / 5) make y discrete.
MAX_CLASSES = 64


class _Codes:
    """Rows of ``y`` -> class index ``[n]`` (``-1`` for a value not seen when fitted)."""

    def __init__(self, values: Tensor) -> None:
        self.values = values  # [K, D], sorted rows

    def __call__(self, y: Tensor) -> Tensor:
        rows = y.reshape(len(y), -1).to(self.values.dtype)
        match = (rows[:, None, :] == self.values[None, :, :]).all(-1)  # [n, K]
        return torch.where(
            match.any(1), match.int().argmax(1), torch.full_like(match[:, 0], -1, dtype=torch.long)
        )


def discrete_codes(y: Tensor) -> _Codes | None:
    """The class map of ``y: [N, D]`` when its rows take at most :data:`MAX_CLASSES`
    distinct values and fewer than ``N / 5``; otherwise ``None`` (a continuous target)."""
    values = torch.unique(y.detach().reshape(len(y), -1).cpu(), dim=0)
    if len(values) > MAX_CLASSES or len(values) >= len(y) / 5 or len(values) < 2:
        return None
    return _Codes(values)


def _classifier(kind: str, dx: int, k: int, config: AutoConfig) -> nn.Module:
    if kind == "logistic":
        return nn.Linear(dx, k)
    layers: list[nn.Module] = []
    width = dx
    for hidden in config.hidden_dims:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, k))


_NAMES = {"logistic": "logistic regression", "mlp": "MLP classifier"}


def _fit(
    kind: str,
    k: int,
    z: Tensor,
    codes: Tensor,
    fit: Tensor,
    valid: Tensor,
    config: AutoConfig,
    seed: int,
) -> tuple[Density, Density]:
    """A classifier q(y|x) of ``kind`` and the class frequencies q(y) of ``fit``."""
    with seeded(seed):
        net = _classifier(kind, z.shape[1], k, config)

    def log_conditional(x: Tensor, y: Tensor) -> Tensor:
        log_p = torch.log_softmax(net(x.float()), dim=-1).double()
        return log_p.gather(1, y.clamp_min(0).view(-1, 1)).squeeze(1).masked_fill(y < 0, -math.inf)

    start = time.perf_counter()
    # a classifier's loss is smooth and its optimum near: ten times the flows' rate
    fast = replace(config, lr=10 * config.lr)
    epochs, stopped_by = train_density(
        net, log_conditional, (z[fit], codes[fit]), (z[valid], codes[valid]), fast, seed
    )
    conditional = Density(
        _NAMES[kind], log_conditional, time.perf_counter() - start, epochs, net, stopped_by
    )
    counts = torch.bincount(codes[fit], minlength=k).double() + 0.5  # unseen classes: 1/2
    log_freq = (counts / counts.sum()).log()

    def log_marginal(x: Tensor, y: Tensor) -> Tensor:
        return log_freq[y.clamp_min(0)].masked_fill(y < 0, -math.inf)

    return conditional, Density("class frequencies", log_marginal)


def discrete_estimate(
    x: Tensor, y: Tensor, codes_of: _Codes, *, seed: int, config: AutoConfig | None = None
) -> AutoOutcome:
    """:math:`I(X; Y)` in nats for ``x: [N, D_x]`` and a discrete ``y: [N, D_y]`` whose
    classes ``codes_of`` gives (see the module docstring)."""
    config = config or AutoConfig()
    n, k = len(x), len(codes_of.values)
    gx = Gaussianizer(x)
    z, codes = gx(x).float(), codes_of(y)
    order = seeded_permutation(n, seed)
    folds = list(torch.tensor_split(order, max(config.folds, 2)))
    fit, valid = split(torch.cat(folds[1:]), config.valid_fraction)
    kinds = ("logistic", "mlp") if config.flows else ("logistic",)
    candidates = [_fit(kind, k, z, codes, fit, valid, config, seed) for kind in kinds]
    which, records = choose(
        [c[0] for c in candidates], (z[valid], codes[valid]), config.margin, config.min_gain
    )
    kind = kinds[which]
    conditional, marginal = candidates[which]
    pieces = []
    for index, test in enumerate(folds):
        if index > 0:
            rest = torch.cat([f for j, f in enumerate(folds) if j != index])
            conditional, marginal = _fit(
                kind, k, z, codes, *split(rest, config.valid_fraction), config, seed + index
            )
        with torch.no_grad():
            pieces.append(
                conditional.log_prob(z[test], codes[test])
                - marginal.log_prob(z[test], codes[test])
            )
    terms = torch.cat(pieces)
    mi = float(terms.mean())
    details = {
        "marginal_map": "gaussianize (x only)",
        "target": f"discrete ({k} values)",
        "conditional": conditional.name,
        "marginal": marginal.name,
        "candidates_conditional": records,
        "evaluated_on": f"{len(folds)}-fold cross-fitting",
        "reason": (
            f"y takes {k} distinct values, so q(y|x) is a classifier ({conditional.name}, "
            "chosen by held-out log-likelihood) and q(y) the class frequencies"
        ),
    }
    model = AutoDoE(gx, codes_of, conditional, marginal, y_dtype=torch.long)
    warnings = ()
    if conditional.stopped_by in ("time", "epochs"):
        warnings = (
            f"the classifier ({conditional.name}) was still improving when its budget ran "
            "out: the estimate may be too low; raise AutoConfig.max_seconds or max_epochs",
        )
    return AutoOutcome(
        mi=mi,
        std_error=float(terms.std() / math.sqrt(n)),
        log_ratio=terms.float(),
        estimator=f"{conditional.name} (discrete y)",
        model=model,
        details=details,
        n_train=n - len(folds[0]),
        n_test=n,
        warnings=warnings,
    )
