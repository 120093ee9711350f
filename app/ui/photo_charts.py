"""What the photo page adds to its figures: the face detector's five points, the reference.

They are drawn as green crosses, unlike the networks' most likely positions (filled circles
in each landmark's colour) and the average face's landmarks (magenta rings).
"""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from . import labels

__all__ = ["REFERENCE_COLOUR", "REFERENCE_NAME", "reference_points"]

REFERENCE_COLOUR = "#39ff14"
#: The legend entry of the reference points (the e2e test looks for it).
REFERENCE_NAME = "Face detector's points (reference)"


def reference_points(
    fig: go.Figure,
    points: Mapping[str, tuple[float, float]],
    *,
    legend: bool = True,
    size: int = 12,
) -> go.Figure:
    """Draw the face detector's points (``{landmark: (x, y)}`` in the figure's pixels) on
    ``fig`` as one trace of green crosses named ``REFERENCE_NAME``."""
    names = list(points)
    fig.add_trace(
        go.Scatter(
            x=[points[n][0] for n in names],
            y=[points[n][1] for n in names],
            mode="markers",
            marker=dict(
                symbol="x-thin-open",
                size=size,
                color=REFERENCE_COLOUR,
                line=dict(width=3, color=REFERENCE_COLOUR),
            ),
            name=REFERENCE_NAME,
            showlegend=legend,
            customdata=[labels.landmark(n) for n in names],
            hovertemplate="face detector: %{customdata} (%{x:.0f}, %{y:.0f})<extra></extra>",
        )
    )
    return fig
