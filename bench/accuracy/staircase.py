"""The staircase benchmark of Poole et al. (ICML 2019), reported as Song & Ermon (ICLR 2020).

One estimator is trained on fresh samples at every step, while the true MI of its data
climbs a staircase: ``x, y`` are 20-d correlated Gaussians whose MI is held at 2, 4, 6, 8
and 10 nats for ``steps_per_level`` steps each (batch 64). The per-step estimate is the mean
of the per-sample terms of the training batch, from the same pass as the step's loss.

Per level the table gives the bias, standard deviation and mean squared error of the
per-step estimates over the last half of the level's steps (the first half lets the
estimator catch up with the jump), and the staircase plot shows every step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.accuracy.samplers import CorrelatedGaussian
from mist_core import build_estimator
from mist_core._rng import seeded

__all__ = [
    "LEVELS",
    "StaircaseConfig",
    "StaircaseResult",
    "club_target",
    "level_stats",
    "plot_staircase",
    "run_staircase",
]

LEVELS = (2.0, 4.0, 6.0, 8.0, 10.0)
DEFAULT_ESTIMATORS = ("doe", "ba", "club", "infonce", "smile", "nwj", "js", "mine")
DISCRIMINATIVE = frozenset({"nwj", "mine", "infonce", "js", "smile"})
TITLES = {"doe": "DoE", "ba": "BA", "club": "CLUB", "l1out": "L1Out", "infonce": "InfoNCE",
          "smile": "SMILE (tau = 5)", "nwj": "NWJ", "js": "JS", "mine": "MINE"}  # fmt: skip


@dataclass(frozen=True)
class StaircaseConfig:
    """The setup: Poole et al. use d = 20, batch 64, 4,000 steps per level, Adam at 5e-4.

    The critics keep Poole's learning rate. The flow-based estimators (DoE, BA, CLUB,
    L1Out) take 2e-3: their conditional flow starts at the identity and its linear context
    path has to grow from zero, which at 5e-4 takes most of a lite level (measured: CLUB
    ~10% under its target at 2 nats with 1e-3, within 5% with 2e-3; DoE within 0.12 nats
    with either).
    """

    dim: int = 20
    batch_size: int = 64
    levels: tuple[float, ...] = LEVELS
    steps_per_level: int = 800
    lr_critic: float = 5e-4
    lr_flow: float = 2e-3
    seed: int = 0
    #: Discriminative critics: "separable" (Poole's separable critic, g(x)^T h(y)) or
    #: "joint" (an MLP on [x, y], Poole's "concat").
    critic: str = "separable"
    estimator_options: dict[str, dict] = field(default_factory=dict)


@dataclass
class StaircaseResult:
    """Per-step estimates ``[levels * steps_per_level]`` and the true MI at each step."""

    estimator: str
    config: StaircaseConfig
    estimates: list[float]
    truth: list[float]
    seconds: float


def club_target(mi: float, dim: int) -> float:
    r"""What CLUB measures with the exact conditional on correlated Gaussians:
    :math:`d\,\rho^2 / (1 - \rho^2) = d\,(e^{2I/d} - 1)`, above the MI."""
    return dim * math.expm1(2.0 * mi / dim)


def _options(name: str, config: StaircaseConfig, sampler: CorrelatedGaussian) -> dict:
    options = dict(config.estimator_options.get(name, {}))
    if name == "ba":
        options.setdefault("entropy_y", sampler.entropy_y())
    if name in DISCRIMINATIVE:
        options.setdefault("critic", config.critic)
    return options


def run_staircase(name: str, config: StaircaseConfig) -> StaircaseResult:
    """Train one estimator up the staircase; every step sees a fresh batch."""
    generator = torch.Generator().manual_seed(config.seed)
    first = CorrelatedGaussian.with_mi(config.dim, config.levels[0])
    with seeded(config.seed):
        model = build_estimator(name, config.dim, config.dim, **_options(name, config, first))
    lr = config.lr_critic if name in DISCRIMINATIVE else config.lr_flow
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    estimates: list[float] = []
    truth: list[float] = []
    start = time.perf_counter()
    for level in config.levels:
        sampler = CorrelatedGaussian.with_mi(config.dim, level)
        for _ in range(config.steps_per_level):
            x, y = sampler.sample(config.batch_size, generator)
            terms = model.terms(x, y)
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            optimizer.step()
            estimates.append(float(terms.log_ratio.detach().mean()))
            truth.append(level)
    return StaircaseResult(name, config, estimates, truth, time.perf_counter() - start)


def level_stats(result: StaircaseResult) -> list[dict]:
    """Bias, standard deviation and MSE per level, over the last half of its steps.

    Non-finite estimates are counted (``n_nonfinite``) and left out of the moments.
    """
    rows = []
    per = result.config.steps_per_level
    for index, level in enumerate(result.config.levels):
        chunk = result.estimates[index * per + per // 2 : (index + 1) * per]
        values = torch.tensor(chunk, dtype=torch.float64)
        finite = values[torch.isfinite(values)]
        n_bad = int(values.numel() - finite.numel())
        if finite.numel() == 0:
            mean = std = mse = float("nan")
        else:
            mean = float(finite.mean())
            std = float(finite.std()) if finite.numel() > 1 else 0.0
            mse = float(((finite - level) ** 2).mean())
        rows.append(
            {
                "estimator": result.estimator,
                "true": level,
                "mean": mean,
                "bias": mean - level,
                "std": std,
                "mse": mse,
                "n_nonfinite": n_bad,
            }
        )
    return rows


def plot_staircase(results: Sequence[StaircaseResult], path: Path) -> Path:
    """One panel per estimator: each step's estimate (faint), a 50-step running mean, the
    true MI (black), and log(batch) for reference (dotted) -- the figure of Poole et al."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    columns = min(n, 4)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.9 * rows), squeeze=False)
    top = max(results[0].config.levels) * 1.35
    for ax, result in zip(axes.flat, results, strict=False):
        steps = torch.arange(len(result.estimates))
        panel_top = top
        if result.estimator == "club":  # CLUB measures d(e^{2I/d} - 1), far above I
            panel_top = club_target(max(result.config.levels), result.config.dim) * 1.15
        values = torch.tensor(result.estimates, dtype=torch.float64).clamp(-2.0, panel_top)
        window = 50
        smooth = torch.nn.functional.avg_pool1d(
            values.view(1, 1, -1), window, stride=1, count_include_pad=False
        ).view(-1)
        ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.6)
        ax.plot(steps[window - 1 :], smooth, color="tab:blue", linewidth=1.2)
        ax.plot(steps, result.truth, color="black", linewidth=1.0)
        if result.estimator == "club":
            target = [club_target(t, result.config.dim) for t in result.truth]
            ax.plot(steps, target, color="tab:red", linewidth=0.8, linestyle="--")
        ax.axhline(math.log(result.config.batch_size), color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(TITLES.get(result.estimator, result.estimator))
        ax.set_ylim(-1.0, panel_top)
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("MI (nats)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    config = results[0].config
    fig.suptitle(
        f"Staircase: d={config.dim}, batch {config.batch_size}, "
        f"{config.steps_per_level} steps per level, seed {config.seed} "
        "(black: truth; dotted: log batch; red dashes: what CLUB measures)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
