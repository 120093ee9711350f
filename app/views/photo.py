"""Your photo: the same posterior maps on a photo you upload (it stays on this computer), with
the face detector's five points as a reference."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd
import streamlit as st
from ui import calibration, charts, labels, photo_charts, posteriors, state

from mist_core.data.landmarks import CELEBA_LANDMARKS, CELEBA_SIZE
from mist_core.photos import (
    EXAMPLE_CREDIT,
    Alignment,
    Face,
    PhotoError,
    align_to_face,
    detect_face,
    example_available,
    example_photo,
    load_photo,
    manual_alignment,
)
from mist_core.reference import ReferenceDistance, mean_distances, reference_distances_from_maps

st.title("Your photo")
st.markdown(
    "Upload a photo with one face, looking at the camera. It is cropped and scaled like the "
    "training faces (eyes level, at the same place), then each trained network says where "
    "it thinks the eyes, the nose and the mouth corners are. A face detector made for real "
    "photos finds the same five points: they are the reference the networks are measured "
    "against. The photo never leaves this computer."
)


@st.cache_data(show_spinner=False, max_entries=1)
def _example() -> bytes:
    return example_photo()


upload = st.file_uploader("A photo (JPEG or PNG, up to 25 MB)", type=["jpg", "jpeg", "png"])
if upload is None and example_available():
    if st.button("No photo at hand? Try an example", key="photo_example_button"):
        st.session_state["photo_example"] = True
if upload is not None:
    data = upload.getvalue()
elif st.session_state.get("photo_example"):
    data = _example()
    st.caption(f"The example: {EXAMPLE_CREDIT}.")
else:
    st.info("Choose a photo above to begin.")
    st.stop()

try:
    photo = load_photo(data)
except PhotoError as error:
    st.error(f"{error}")
    st.stop()


@st.cache_data(show_spinner=False, max_entries=16)
def _detect(digest: str, _image: np.ndarray) -> Face | None:
    return detect_face(_image)


digest = hashlib.sha1(data).hexdigest()[:16]
with st.spinner("Looking for a face…"):
    face = _detect(digest, photo.image)

height, width = CELEBA_SIZE
manual = st.toggle(
    "Frame the face by hand",
    value=face is None,
    key=f"manual_{digest}",
    help="Zoom and move the crop so that the face sits like the example's.",
)
manual = manual or face is None  # nothing to align on: the crop is by hand
if face is None:
    st.warning(
        "No face was found automatically (it may be turned away, small, or not a face). "
        "Frame it by hand with the sliders: eyes on the two marks, mouth below."
    )
if manual:
    a, b, c = st.columns(3)
    zoom = a.slider("Zoom", 1.0, 8.0, 1.0, 0.05, key=f"zoom_{digest}")
    dx = b.slider("Move left / right", -1.0, 1.0, 0.0, 0.01, key=f"dx_{digest}")
    dy = c.slider("Move up / down", -1.0, 1.0, 0.0, 0.01, key=f"dy_{digest}")
    alignment = manual_alignment(photo.image.shape, zoom=zoom, offset=(dx, dy))
else:
    assert face is not None
    alignment = align_to_face(face, photo.image.shape)
aligned = alignment.warp(photo.image)

# The reference: the detector's five points, on the photo and in the aligned crop.
reference_photo = face.named_points if face is not None else None
reference = None
if reference_photo is not None:
    moved = alignment.to_aligned(np.array(list(reference_photo.values()), dtype=float))
    reference = {n: (float(x), float(y)) for n, (x, y) in zip(reference_photo, moved, strict=True)}


def _how_found(face: Face | None, alignment: Alignment) -> str:
    """What was found and how the crop was made, in plain words."""
    if face is None:
        return "no face found: framed by hand"
    if face.detector == "yuface":
        found = f"face and its five points found by the face detector ({face.score:.0f}% sure)"
    elif face.eyes is not None:
        found = "face and eyes found (the five-point face detector is not available)"
    else:
        found = "face found (eyes not found)"
    how = {
        "five points": "aligned on the five points found by the face detector",
        "eyes": "aligned on the eyes",
        "face box": "aligned on the face box",
        "manual": "framed by hand",
    }.get(alignment.method, alignment.method)
    return f"{found}; {how}"


corners = alignment.to_photo(np.array([[0, 0], [width, 0], [width, height], [0, height]], float))
left, right = st.columns([3, 2])
with left:
    fig = charts.image_figure(photo.image, title="Your photo", height_px=420)
    charts.crop_outline(fig, corners)
    if reference_photo is not None:
        photo_charts.reference_points(fig, reference_photo, legend=False, size=9)
    st.plotly_chart(fig, key="photo_original", width="stretch")
    st.caption(
        f"{photo.original_size[1]} x {photo.original_size[0]} pixels ({photo.format}); "
        f"{_how_found(face, alignment)}."
    )
with right:
    fig = charts.image_figure(aligned, title="Aligned like the training faces", height_px=420)
    fig.add_scatter(
        x=[p[0] for p in CELEBA_LANDMARKS.values()],
        y=[p[1] for p in CELEBA_LANDMARKS.values()],
        mode="markers",
        marker=dict(symbol="circle-open", size=9, color="#ff00ff"),
        showlegend=False,
        hoverinfo="skip",
    )
    if reference is not None:
        photo_charts.reference_points(fig, reference, legend=False, size=8)
    st.plotly_chart(fig, key="photo_aligned", width="stretch")
    words = "Magenta circles: where the landmarks sit on an average training face."
    if reference is not None:
        words += " Green crosses: the five points the face detector found on this photo."
    st.caption(words)


def _around(corners: np.ndarray, shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """The crop's bounding box with a margin, within the photo: what to show of it."""
    (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
    margin = 0.25 * max(x1 - x0, y1 - y0)
    return (
        max(0.0, x0 - margin),
        max(0.0, y0 - margin),
        min(float(shape[1]), x1 + margin),
        min(float(shape[0]), y1 + margin),
    )


def _without_reference(maps: list) -> list:
    """The maps as drawn: the detector's point is a reference, not the true position."""
    return [
        dataclasses.replace(m, truth=None, log_prob_at_truth=None, pointwise_mi=None) for m in maps
    ]


def _distance_table(rows: list[ReferenceDistance]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Network": [labels.encoder_short(r.encoder) for r in rows],
            "Landmark": [labels.landmark(r.landmark) for r in rows],
            "Distance (px)": [r.distance for r in rows],
            "Of the eye-to-eye distance": [
                None if r.eye_distances is None else 100 * r.eye_distances for r in rows
            ],
            "Log-density there": [r.log_density for r in rows],
            "Vs. the average face (nats)": [r.gain for r in rows],
        }
    )


def _show_distances(rows: list[ReferenceDistance], landmark: str, synthetic: bool) -> None:
    """The sentences and the table of each network's distance to the detector's points."""
    st.subheader("How far from the face detector's points")
    if synthetic:
        st.info(
            "This run was trained on drawn faces: a real photo is new to its networks, so "
            "their positions can be far from the face detector's points. And since the photo "
            "is aligned on those points, a small distance may only mean that a network guesses "
            "where the landmark sits on an average face: the last column says whether seeing "
            "the photo helped (positive) or not."
        )
    what = labels.landmark(landmark).lower()
    for row in (r for r in rows if r.landmark == landmark):
        share = ""
        if row.eye_distances is not None:
            share = f" ({row.eye_distances:.0%} of the eye-to-eye distance)"
        st.markdown(
            f"**{labels.encoder_short(row.encoder)}** puts the {what} {row.distance:.1f} pixels"
            f"{share} from where the face detector finds it."
        )
    means = ", ".join(
        f"{labels.encoder_short(name)} {value:.1f} px"
        for name, value in mean_distances(rows).items()
    )
    st.markdown(f"On average over the landmarks: {means}.")
    st.caption(
        "Distances are in pixels of the aligned face (178 x 218), where the eyes are about 39 "
        "pixels apart. The log-density is how likely the network finds the detector's point "
        "(higher: more expected); the last column compares it with the average face's."
    )
    st.dataframe(
        _distance_table(rows),
        hide_index=True,
        key="photo_distances",
        column_config={
            "Distance (px)": st.column_config.NumberColumn(
                format="%.1f",
                help="From the network's most likely position to the face detector's point, "
                "in pixels of the aligned face (178 x 218; the eyes are about 39 apart).",
            ),
            "Of the eye-to-eye distance": st.column_config.NumberColumn(
                format="%.0f%%",
                help="The same distance, as a share of the distance between the detector's "
                "two eyes: it does not depend on the photo's size.",
            ),
            "Log-density there": st.column_config.NumberColumn(
                format="%.2f",
                help="log q(detector's point | photo): how likely the network finds the "
                "detector's point (higher: more expected; per square pixel).",
            ),
            "Vs. the average face (nats)": st.column_config.NumberColumn(
                format="%+.2f",
                help="log q(point | photo) − log q(point): positive when seeing the photo made "
                "the network expect the detector's point more than it does on faces in general.",
            ),
        },
    )


st.subheader("What the networks see in it")
runs = state.runs_with_checkpoint()
if not runs:
    st.info("No trained model yet. Train one on the **Train** page, then come back.")
    st.stop()
info, step, experiment = state.pick_trained_model(runs, key="photo_run")
config = experiment.config
a, b, c = st.columns(3)
landmark, style, zoom_in = posteriors.view_controls(config.landmarks, a, b, prefix="photo")
best = c.selectbox(
    "Network for the positions on your photo",
    list(config.encoders),
    index=len(config.encoders) - 1,
    format_func=labels.encoder,
    key="photo_encoder",
)

key = posteriors.image_key(aligned)
found = calibration.run_calibration(info)
# the regions drawn as the run's recalibration says (fitted on its held-out faces), if any
fits = found.report.recalibrations(landmark) if found.report is not None else {}
if reference is None:
    maps, seconds = posteriors.maps_for(
        info.name, step, key, aligned, landmark, None, None, recalibration=fits or None
    )
    by_landmark = None
else:  # every network, every landmark, at the detector's points: shared with the table
    by_landmark, seconds = {}, 0.0
    for name in config.landmarks:
        by_landmark[name], took = posteriors.maps_for(
            info.name,
            step,
            key,
            aligned,
            name,
            reference.get(name),
            None,
            recalibration=(fits or None) if name == landmark else None,
        )
        seconds += took
    maps = _without_reference(by_landmark[landmark])
posteriors.show_maps(aligned, maps, style=style, key="photo_maps", zoom=zoom_in)
regions = (
    f"regions recalibrated on {calibration.recalibrated_faces(fits)} held-out faces"
    if fits
    else "regions as the networks draw them"
)
st.caption(f"{len(maps)} densities over every pixel in {seconds:.2f} s; {regions}.")

modes = {}
for name in config.landmarks:
    if by_landmark is not None:
        found_maps = by_landmark[name]
    else:
        found_maps, _ = posteriors.maps_for(info.name, step, key, aligned, name, None, (best,))
    modes[name] = next(m.mode for m in found_maps if m.encoder == best)
points = alignment.to_photo(np.array(list(modes.values()), dtype=float))
on_photo = {name: (float(x), float(y)) for name, (x, y) in zip(modes, points, strict=True)}
fig = charts.landmarks_on_photo(
    photo.image,
    on_photo,
    title=f"Most likely positions on your photo, by {labels.encoder_short(best)}",
    view=_around(corners, photo.image.shape),
)
if reference_photo is not None:
    photo_charts.reference_points(fig, reference_photo)
st.plotly_chart(fig, key="photo_modes", width="stretch")

if reference is None:
    st.caption(
        "No reference here: the five-point face detector "
        + ("found no face." if face is None else "is not available, or found no points.")
    )
else:
    rows = reference_distances_from_maps(by_landmark, reference)
    _show_distances(rows, landmark, synthetic=config.dataset == "synthetic")
