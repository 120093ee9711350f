"""Plotly figures of the dashboard. They draw numbers computed by ``mist_core``; they compute
nothing themselves beyond smoothing a curve for the eye.

Image coordinates follow ``mist_core``: x to the right, y downward, the centre of pixel
(row i, column j) at (j + 0.5, i + 0.5); every image axis is reversed in y accordingly.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from mist_core.calibration import Coverage
from mist_core.posterior import PosteriorMap
from mist_core.results import PairEstimate, parse_pair_name

from . import labels

__all__ = [
    "ENCODER_COLOURS",
    "LANDMARK_COLOURS",
    "LANDMARK_DASH",
    "MAX_SHOWN_SIDE",
    "REGION_COLOURS",
    "PairCurve",
    "bar_rows",
    "calibration_chart",
    "crop_outline",
    "image_figure",
    "landmarks_on_photo",
    "mi_bars",
    "mi_curves",
    "pair_curves",
    "posterior_figure",
]

#: One colour per encoder, the same on every page.
ENCODER_COLOURS = {
    "random_init": "#8c8c8c",
    "pretrained": "#1f77b4",
    "finetuned": "#d62728",
    "trained": "#ff7f0e",
}
LANDMARK_DASH = {
    "left_eye": "solid",
    "right_eye": "dot",
    "nose": "dash",
    "left_mouth": "longdash",
    "right_mouth": "dashdot",
}
REGION_COLOURS = {0.5: "#00e5ff", 0.9: "#ffea00"}


@dataclass(frozen=True)
class PairCurve:
    """One (encoder, landmark) pair's training curve: ``points`` are ``(step, nats)``."""

    encoder: str
    landmark: str
    points: Sequence[tuple[int, float]]

    @property
    def latest(self) -> float | None:
        """The last value logged, ``None`` before the first step."""
        return self.points[-1][1] if self.points else None


def pair_curves(curves: Mapping[str, Sequence[tuple[int, float]]]) -> list[PairCurve]:
    """The per-pair curves of a job's ``curves`` (keys ``"I(encoder;landmark)"``), in their
    order; the other curves (``"loss"``) are left out."""
    pairs = []
    for name, points in curves.items():
        try:
            encoder, landmark = parse_pair_name(name)
        except ValueError:
            continue
        pairs.append(PairCurve(encoder, landmark, tuple(points)))
    return pairs


def _layout(fig: go.Figure, **kwargs) -> go.Figure:
    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10), **kwargs)
    return fig


def mi_curves(
    pairs: Sequence[PairCurve],
    *,
    encoders: Sequence[str] | None = None,
    landmarks: Sequence[str] | None = None,
    smooth: int = 15,
    title: str = "Mutual information while training (nats)",
) -> go.Figure:
    """One line per encoder x landmark: the running mean of the per-batch estimates over
    ``smooth`` steps (the raw estimates are noisy), coloured by encoder, dashed by landmark."""
    fig = go.Figure()
    for pair in pairs:
        if not pair.points:
            continue
        if (encoders is not None and pair.encoder not in encoders) or (
            landmarks is not None and pair.landmark not in landmarks
        ):
            continue
        steps = np.array([p[0] for p in pair.points])
        values = pd.Series([p[1] for p in pair.points]).rolling(smooth, min_periods=1).mean()
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines",
                name=labels.pair(pair.encoder, pair.landmark),
                line=dict(
                    color=ENCODER_COLOURS.get(pair.encoder),
                    dash=LANDMARK_DASH.get(pair.landmark, "solid"),
                    width=2,
                ),
            )
        )
    return _layout(
        fig,
        title=title,
        xaxis_title="training step",
        yaxis_title="MI (nats)",
        legend=dict(orientation="h", yanchor="top", y=-0.2),
        height=420,
    )


def bar_rows(
    estimates: Sequence[PairEstimate], landmarks: Sequence[str]
) -> dict[str, list[PairEstimate | None]]:
    """Per encoder (in the order they first appear), its estimate for each of
    ``landmarks`` (``None`` where it has none): one row of bars."""
    by_encoder: dict[str, dict[str, PairEstimate]] = {}
    for estimate in estimates:
        by_encoder.setdefault(estimate.representation, {})[estimate.target] = estimate
    return {encoder: [found.get(lm) for lm in landmarks] for encoder, found in by_encoder.items()}


def mi_bars(
    estimates: Sequence[PairEstimate], *, title: str = "What each network knows (nats)"
) -> go.Figure:
    """The seed's bar chart: MI per landmark, one bar per encoder (both in the order they
    first appear), error bars of one standard error; a pair without an estimate has no bar."""
    fig = go.Figure()
    landmarks = list(dict.fromkeys(e.target for e in estimates))
    for encoder, row in bar_rows(estimates, landmarks).items():
        fig.add_trace(
            go.Bar(
                x=[labels.landmark(lm) for lm in landmarks],
                y=[e.mi if e is not None else None for e in row],
                error_y=dict(
                    type="data",
                    array=[e.std_error if e is not None else None for e in row],
                    visible=True,
                ),
                name=labels.encoder(encoder),
                marker_color=ENCODER_COLOURS.get(encoder),
                hovertemplate="%{x}: %{y:.2f} ± %{error_y.array:.2f} nats<extra></extra>",
            )
        )
    fig.add_hline(y=0, line_color="black", line_width=1)
    return _layout(
        fig,
        title=title,
        barmode="group",
        yaxis_title="MI (nats)",
        legend=dict(orientation="h", yanchor="top", y=-0.15),
        height=420,
    )


#: The no-image density q(landmark) in the calibration chart: greyed, dotted.
MARGINAL_COLOUR = "#b8b8b8"


def calibration_chart(
    curves: Mapping[str | None, Sequence[Coverage]],
    *,
    title: str = "Do the regions hold the truth as often as they say?",
    height_px: int = 460,
) -> go.Figure:
    """Observed against nominal coverage, one line per density (``None``: the marginal,
    greyed), the diagonal as "perfect" and a grey band of ± 2 standard errors around it (where
    a calibrated line falls 19 times in 20 on that many faces); the levels drawn on the
    Posteriors page (50%, 90%) are marked in their contour colours."""
    fig = go.Figure()
    first = next((rows for rows in curves.values() if rows), None)
    if first is not None:
        xs = [100 * c.level for c in first]
        upper = [min(100.0, 100 * (c.level + 2 * c.std_error)) for c in first]
        lower = [max(0.0, 100 * (c.level - 2 * c.std_error)) for c in first]
        fig.add_trace(
            go.Scatter(
                x=[*xs, *xs[::-1]],
                y=[*upper, *lower[::-1]],
                mode="lines",
                fill="toself",
                fillcolor="rgba(0, 0, 0, 0.08)",
                line=dict(width=0, color="rgba(0, 0, 0, 0)"),
                name="chance (± 2 s.e.)",
                hoverinfo="skip",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[0, 100],
            y=[0, 100],
            mode="lines",
            line=dict(color="black", dash="dash", width=1),
            name="perfect",
            hoverinfo="skip",
        )
    )
    for level, colour in REGION_COLOURS.items():
        fig.add_vline(x=100 * level, line=dict(color=colour, width=4), opacity=0.8, layer="below")
    for encoder, rows in curves.items():
        if not rows:
            continue
        marginal = encoder is None
        name = "Average face (no picture)" if marginal else labels.encoder_short(encoder)
        fig.add_trace(
            go.Scatter(
                x=[100 * c.level for c in rows],
                y=[100 * c.observed for c in rows],
                mode="lines+markers",
                name=name,
                line=dict(
                    color=MARGINAL_COLOUR if marginal else ENCODER_COLOURS.get(encoder),
                    dash="dot" if marginal else "solid",
                    width=2 if marginal else 3,
                ),
                marker=dict(size=6 if marginal else 8),
                hovertemplate=f"{name}: the %{{x:.0f}}% region held the truth "
                "%{y:.1f}% of the time<extra></extra>",
            )
        )
    axis = dict(range=[0, 100], dtick=10, ticksuffix="%", constrain="domain")
    fig.update_xaxes(title="the region should hold the true position", **axis)
    fig.update_yaxes(title="it held it (test faces)", **axis)
    return _layout(
        fig,
        title=title,
        legend=dict(orientation="h", yanchor="top", y=-0.2),
        height=height_px,
    )


def _image_axes(fig: go.Figure, height: int, width: int) -> None:
    fig.update_xaxes(range=[0, width], showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(
        range=[height, 0],
        showticklabels=False,
        showgrid=False,
        zeroline=False,
        scaleanchor="x",
    )


#: Images are sent to the browser as PNG/JPEG at most this many pixels on a side.
MAX_SHOWN_SIDE = 900


def _data_uri(image: np.ndarray) -> str:
    """The image as a compressed data URI (a JSON array of every pixel is megabytes)."""
    picture = Image.fromarray(image)
    buffer = io.BytesIO()
    if max(image.shape[:2]) > 400:
        picture.save(buffer, format="JPEG", quality=88)
        kind = "jpeg"
    else:
        picture.save(buffer, format="PNG")
        kind = "png"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode()


def image_figure(image: np.ndarray, *, title: str = "", height_px: int = 330) -> go.Figure:
    """An RGB image ``[H, W, 3] uint8`` with pixel (i, j) centred at (j + 0.5, i + 0.5);
    large photos are shown downscaled, in the same coordinates."""
    height, width = image.shape[:2]
    shown = image
    step = max(height, width) / MAX_SHOWN_SIDE
    if step > 1:
        size = (max(1, round(width / step)), max(1, round(height / step)))
        shown = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    dx, dy = width / shown.shape[1], height / shown.shape[0]
    fig = go.Figure(
        go.Image(source=_data_uri(shown), x0=dx / 2, y0=dy / 2, dx=dx, dy=dy, hoverinfo="skip")
    )
    _image_axes(fig, height, width)
    return _layout(fig, title=dict(text=title, font=dict(size=14)), height=height_px)


def posterior_figure(
    image: np.ndarray,
    posterior: PosteriorMap,
    *,
    style: str = "regions",
    title: str = "",
    height_px: int = 330,
    window: tuple[float, float, float] | None = None,
) -> go.Figure:
    """``image`` ``[H, W, 3] uint8`` with the posterior over it: its 50% and 90% highest-
    density regions (``style="regions"``) or the density as a heat map (``"heatmap"``); the
    true landmark (green cross) and the most likely pixel (white dot). ``window`` = (x, y,
    half-size) in pixels shows only that square."""
    fig = image_figure(image, title=title, height_px=height_px)
    h, w = posterior.log_prob.shape
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    if style == "heatmap":
        density = np.exp(posterior.log_prob - posterior.log_prob.max())
        density[density < 0.02] = np.nan  # transparent where the model puts ~nothing
        fig.add_trace(
            go.Heatmap(
                z=density,
                x=xs,
                y=ys,
                colorscale="Inferno",
                opacity=0.6,
                showscale=False,
                hoverinfo="skip",
            )
        )
    else:
        for mass in sorted(posterior.levels, reverse=True):
            level = posterior.levels[mass]
            colour = REGION_COLOURS.get(mass, "#ffffff")
            fig.add_trace(
                go.Contour(
                    z=posterior.log_prob,
                    x=xs,
                    y=ys,
                    contours=dict(start=level, end=level, size=1.0, coloring="none"),
                    line=dict(color=colour, width=2),
                    showscale=False,
                    name=f"{int(mass * 100)}% region",
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
    if posterior.truth is not None:
        fig.add_trace(
            go.Scatter(
                x=[posterior.truth[0]],
                y=[posterior.truth[1]],
                mode="markers",
                marker=dict(symbol="x", size=11, color="#00ff00", line=dict(width=1)),
                name="true position",
                showlegend=False,
                hovertemplate="true position (%{x:.1f}, %{y:.1f})<extra></extra>",
            )
        )
    if window is not None:  # (x, y, half-size): zoom on the landmark
        cx, cy, half = window
        fig.update_xaxes(range=[cx - half, cx + half])
        fig.update_yaxes(range=[cy + half, cy - half])
    fig.add_trace(
        go.Scatter(
            x=[posterior.mode[0]],
            y=[posterior.mode[1]],
            mode="markers",
            marker=dict(size=7, color="white", line=dict(color="black", width=1)),
            name="most likely",
            showlegend=False,
            hovertemplate="most likely (%{x:.1f}, %{y:.1f})<extra></extra>",
        )
    )
    return fig


LANDMARK_COLOURS = {
    "left_eye": "#00e5ff",
    "right_eye": "#2979ff",
    "nose": "#ffea00",
    "left_mouth": "#ff4081",
    "right_mouth": "#d500f9",
}


def landmarks_on_photo(
    image: np.ndarray,
    points: Mapping[str, tuple[float, float]],
    *,
    title: str = "",
    height_px: int = 480,
    view: tuple[float, float, float, float] | None = None,
) -> go.Figure:
    """The photo with one marker per landmark (``points`` in photo pixels), named in the
    legend; ``view`` = (x0, y0, x1, y1) shows only that part of the photo."""
    fig = image_figure(image, title=title, height_px=height_px)
    for name, (x, y) in points.items():
        fig.add_trace(
            go.Scatter(
                x=[x],
                y=[y],
                mode="markers",
                marker=dict(
                    size=11,
                    symbol="circle",
                    color=LANDMARK_COLOURS.get(name, "#00e5ff"),
                    line=dict(color="black", width=1.5),
                ),
                name=labels.landmark(name),
                hovertemplate=f"{labels.landmark(name)} (%{{x:.0f}}, %{{y:.0f}})<extra></extra>",
            )
        )
    if view is not None:
        x0, y0, x1, y1 = view
        fig.update_xaxes(range=[x0, x1])
        fig.update_yaxes(range=[y1, y0])
    fig.update_layout(showlegend=True, legend=dict(orientation="v", x=1.02, y=1))
    return fig


def crop_outline(fig: go.Figure, corners: np.ndarray, *, colour: str = "#00e5ff") -> go.Figure:
    """Draw the aligned crop's outline (4 corners ``[4, 2]`` in photo pixels) on ``fig``."""
    closed = np.vstack([corners, corners[:1]])
    fig.add_trace(
        go.Scatter(
            x=closed[:, 0],
            y=closed[:, 1],
            mode="lines",
            line=dict(color=colour, width=2),
            showlegend=False,
            hoverinfo="skip",
        )
    )
    return fig
