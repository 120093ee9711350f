"""Posterior maps for the pages, computed by ``mist_core.posterior`` and cached per image."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import streamlit as st
import torch

from mist_core.posterior import PosteriorMap, RegionMasses, posterior_maps

from . import charts, labels, state

__all__ = ["image_key", "image_tensor", "maps_for", "show_maps", "view_controls"]

_LOCK = threading.Lock()  # one evaluation at a time: tabs share the loaded models


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3] uint8`` -> ``[3, H, W]`` float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)


def image_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


@st.cache_data(show_spinner=False, max_entries=64)
def maps_for(
    run_name: str,
    step: int | None,
    key: str,
    _image: np.ndarray,
    landmark: str,
    truth: tuple[float, float] | None,
    encoders: tuple[str, ...] | None = None,
    *,
    recalibration: Mapping[str | None, RegionMasses] | None = None,
) -> tuple[list[PosteriorMap], float]:
    """The marginal's and each encoder's map for one image (cached by ``key``, the image's
    hash), and the seconds it took; ``recalibration`` (per density, from the run's
    calibration report) draws the regions recalibrated."""
    experiment = state.load_experiment(run_name, step)
    with _LOCK, torch.inference_mode():
        started = time.perf_counter()
        maps = posterior_maps(
            experiment,
            image_tensor(_image),
            landmark,
            truth=truth,
            encoders=encoders,
            recalibration=recalibration,
        )
        return maps, time.perf_counter() - started


def show_maps(
    image: np.ndarray,
    maps: list[PosteriorMap],
    *,
    style: str,
    key: str,
    per_row: int = 4,
    zoom: bool = False,
    notes: Mapping[str | None, Sequence[str]] | None = None,
) -> None:
    """One figure per map (the marginal first), with the pointwise MI under each and the
    lines of ``notes`` for its density (encoder, ``None``: the marginal); ``zoom`` shows a
    64-pixel square around the true position (else the average face's best guess)."""
    per_row = max(2, min(per_row, len(maps)))
    window = None
    if zoom and maps:
        centre = maps[0].truth if maps[0].truth is not None else maps[0].mode
        window = (centre[0], centre[1], 32.0)
    for start in range(0, len(maps), per_row):
        row = maps[start : start + per_row]
        for column, pmap in zip(st.columns(per_row), row, strict=False):
            with column:
                if pmap.encoder is None:
                    title = "Average face"
                else:
                    title = labels.encoder_short(pmap.encoder)
                st.plotly_chart(
                    charts.posterior_figure(
                        image, pmap, style=style, title=title, height_px=440, window=window
                    ),
                    key=f"{key}_{start}_{pmap.encoder}",
                    width="stretch",
                    config={"displayModeBar": False},
                )
                if pmap.encoder is None:
                    st.caption("q(landmark): where it is on faces in general, no picture seen.")
                elif pmap.pointwise_mi is not None:
                    st.metric(
                        "Pointwise MI on this face",
                        f"{pmap.pointwise_mi:+.2f} nats",
                        help="log q(y|x) − log q(y) at the true position: how much more "
                        "probability this network's guess gives it than the average-face "
                        "guess (positive: the picture helped).",
                    )
                    st.caption("q(landmark | its representation of this face)")
                else:
                    st.caption(f"Most likely at ({pmap.mode[0]:.0f}, {pmap.mode[1]:.0f}) px.")
                for line in (notes or {}).get(pmap.encoder, ()):
                    st.caption(line)


def view_controls(landmarks, where_landmark, where_style, prefix: str) -> tuple[str, str, bool]:
    """The landmark picker, regions / heat map, and zoom: ``(landmark, style, zoom)``."""
    landmark = where_landmark.selectbox(
        "Landmark", list(landmarks), format_func=labels.landmark, key=f"{prefix}_landmark"
    )
    style = where_style.radio(
        "Show",
        list(labels.POSTERIOR_STYLES),
        format_func=labels.POSTERIOR_STYLES.get,
        key=f"{prefix}_style",
        horizontal=True,
    )
    zoom = where_style.toggle("Zoom in on the landmark", value=True, key=f"{prefix}_zoom")
    return landmark, style, zoom
