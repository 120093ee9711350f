"""Figures that compare runs on the Results page: training curves of several runs overlaid
(colour by run, dash by network, a band of ± one standard error for seed groups) and their
MI bars grouped by landmark. They draw numbers from ``mist_core``; the only thing computed
here is the smoothing of a curve for the eye (:func:`mist_core.comparison.ema`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import plotly.graph_objects as go

from mist_core.comparison import ema

from . import labels
from .charts import bar_rows

__all__ = [
    "EXPORT_FORMATS",
    "NETWORK_DASH",
    "NETWORK_PATTERN",
    "RUN_COLOURS",
    "Line",
    "colours_for",
    "compare_bars",
    "compare_curves",
    "download_config",
]

#: One colour per run (or seed group), in the order the runs are listed; reused cyclically.
RUN_COLOURS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
)
#: One dash per network, the same in every comparison chart.
NETWORK_DASH = {
    "random_init": "dot",
    "pretrained": "dash",
    "finetuned": "solid",
    "trained": "longdash",
}
#: One bar pattern per network (the bars' colour is the run's).
NETWORK_PATTERN = {"random_init": ".", "pretrained": "/", "finetuned": "", "trained": "x"}


class Estimate(Protocol):
    """What a bar needs: a PairEstimate of one run, or a GroupEstimate of a seed group."""

    representation: str
    target: str
    mi: float
    std_error: float


@dataclass(frozen=True)
class Line:
    """One line of :func:`compare_curves`: one network of a run (or the mean of a seed
    group's runs). ``steps``, ``values`` (nats) and ``spread`` (the standard error across
    seeds, drawn as a band; ``None`` for a single run) are ``[points]``; ``final`` is the
    held-out estimate ``(mi, std_error)`` marked at the last step."""

    run: str
    encoder: str
    steps: np.ndarray
    values: np.ndarray
    spread: np.ndarray | None = None
    final: tuple[float, float] | None = None


def colours_for(names: Sequence[str]) -> dict[str, str]:
    """A colour per run or group name, in order (:data:`RUN_COLOURS`, cyclically)."""
    return {name: RUN_COLOURS[i % len(RUN_COLOURS)] for i, name in enumerate(names)}


def _rgba(colour: str, alpha: float) -> str:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _line_name(line: Line) -> str:
    return f"{line.run} · {labels.encoder_short(line.encoder)}"


def _band(fig: go.Figure, line: Line, y: np.ndarray, spread: np.ndarray, colour: str) -> None:
    x = np.concatenate([line.steps, line.steps[::-1]])
    edge = np.concatenate([y + spread, (y - spread)[::-1]])
    fig.add_trace(
        go.Scatter(
            x=x,
            y=edge,
            fill="toself",
            fillcolor=_rgba(colour, 0.15),
            line=dict(width=0),
            hoverinfo="skip",
            showlegend=False,
            legendgroup=_line_name(line),
        )
    )


def compare_curves(
    lines: Sequence[Line],
    colours: Mapping[str, str],
    *,
    smoothing: float = 0.0,
    log_steps: bool = False,
    title: str = "",
) -> go.Figure:
    """The curves of ``lines`` overlaid: colour by run (``colours``), dash by network.
    ``smoothing`` in [0, 1) is the weight of an exponential moving average (0: the raw
    points); when smoothing, the raw points stay faint behind. ``log_steps``: a logarithmic
    step axis. A diamond marks each line's held-out estimate at its last step."""
    fig = go.Figure()
    for line in lines:
        if len(line.steps) == 0:
            continue
        colour = colours.get(line.run, RUN_COLOURS[0])
        name = _line_name(line)
        dash = NETWORK_DASH.get(line.encoder, "solid")
        y = ema(line.values, smoothing) if smoothing > 0 else np.asarray(line.values, float)
        if smoothing > 0:
            fig.add_trace(
                go.Scatter(
                    x=line.steps,
                    y=line.values,
                    mode="lines",
                    line=dict(color=colour, width=1, dash=dash),
                    opacity=0.25,
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=name,
                )
            )
        if line.spread is not None:
            spread = ema(line.spread, smoothing) if smoothing > 0 else line.spread
            _band(fig, line, y, np.asarray(spread, float), colour)
        fig.add_trace(
            go.Scatter(
                x=line.steps,
                y=y,
                mode="lines",
                name=name,
                legendgroup=name,
                line=dict(color=colour, width=2, dash=dash),
                hovertemplate=f"{name}<br>step %{{x}}: %{{y:.2f}} nats<extra></extra>",
            )
        )
        if line.final is not None:
            mi, error = line.final
            fig.add_trace(
                go.Scatter(
                    x=[line.steps[-1]],
                    y=[mi],
                    error_y=dict(type="data", array=[error], visible=True, color=colour),
                    mode="markers",
                    marker=dict(symbol="diamond", size=11, color=colour, line=dict(width=1)),
                    showlegend=False,
                    legendgroup=name,
                    hovertemplate=f"{name}<br>held-out estimate on test faces: "
                    "%{y:.2f} nats<extra></extra>",
                )
            )
    fig.update_layout(
        title=title,
        xaxis_title="training step" + (" (log scale)" if log_steps else ""),
        yaxis_title="MI (nats)",
        legend=dict(orientation="h", yanchor="top", y=-0.2),
        margin=dict(l=10, r=10, t=40, b=10),
        height=440,
    )
    if log_steps:
        fig.update_xaxes(type="log")
    return fig


def compare_bars(
    tables: Mapping[str, Sequence[Estimate]],
    colours: Mapping[str, str],
    *,
    title: str = "",
) -> go.Figure:
    """The MI of several runs (or seed groups) grouped by landmark: one bar per run and
    network (colour by run, pattern by network), whiskers of one standard error."""
    fig = go.Figure()
    landmarks = list(dict.fromkeys(e.target for table in tables.values() for e in table))
    for run, table in tables.items():
        for encoder, row in bar_rows(table, landmarks).items():
            name = f"{run} · {labels.encoder_short(encoder)}"
            fig.add_trace(
                go.Bar(
                    x=[labels.landmark(lm) for lm in landmarks],
                    y=[e.mi if e is not None else None for e in row],
                    error_y=dict(
                        type="data",
                        array=[e.std_error if e is not None else None for e in row],
                        visible=True,
                    ),
                    name=name,
                    marker=dict(
                        color=colours.get(run, RUN_COLOURS[0]),
                        pattern_shape=NETWORK_PATTERN.get(encoder, ""),
                        pattern_fillmode="overlay",
                    ),
                    hovertemplate=f"{name}<br>%{{x}}: %{{y:.2f}} ± %{{error_y.array:.2f}} "
                    "nats<extra></extra>",
                )
            )
    fig.add_hline(y=0, line_color="black", line_width=1)
    fig.update_layout(
        title=title,
        barmode="group",
        yaxis_title="MI (nats)",
        legend=dict(orientation="h", yanchor="top", y=-0.15),
        margin=dict(l=10, r=10, t=40, b=10),
        height=440,
    )
    return fig


#: The formats a chart's camera button can download (plotly's own export).
EXPORT_FORMATS = ("png", "svg")


def download_config(fmt: str, filename: str) -> dict:
    """The ``config`` of ``st.plotly_chart`` whose camera button downloads the figure as
    ``fmt`` (``"png"`` or ``"svg"``, :data:`EXPORT_FORMATS`) named ``filename``."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"fmt must be one of {EXPORT_FORMATS}, got {fmt!r}")
    return {
        "displaylogo": False,
        "toImageButtonOptions": {"format": fmt, "filename": filename, "scale": 2},
    }
