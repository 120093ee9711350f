"""Your photo: the same posterior maps on a photo you upload (it stays on this computer)."""

from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st
from ui import charts, labels, posteriors, state

from mist_core.data.landmarks import CELEBA_LANDMARKS, CELEBA_SIZE
from mist_core.photos import (
    Face,
    PhotoError,
    align_to_face,
    detect_face,
    load_photo,
    manual_alignment,
)

st.title("Your photo")
st.markdown(
    "Upload a photo with one face, looking at the camera. It is cropped and scaled like the "
    "training faces (eyes level, at the same place), then each trained network says where "
    "it thinks the eyes, the nose and the mouth corners are. The photo never leaves this "
    "computer."
)

upload = st.file_uploader("A photo (JPEG or PNG, up to 25 MB)", type=["jpg", "jpeg", "png"])
if upload is None:
    st.info("Choose a photo above to begin.")
    st.stop()

data = upload.getvalue()
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

corners = alignment.to_photo(np.array([[0, 0], [width, 0], [width, height], [0, height]], float))
left, right = st.columns([3, 2])
with left:
    fig = charts.image_figure(photo.image, title="Your photo", height_px=420)
    charts.crop_outline(fig, corners)
    st.plotly_chart(fig, key="photo_original", width="stretch")
    found = {
        "eyes": "face and eyes found: aligned on the eyes",
        "face box": "face found (eyes not found): aligned on the face box",
        "manual": "framed by hand",
    }.get(alignment.method, alignment.method)
    st.caption(
        f"{photo.original_size[1]} x {photo.original_size[0]} pixels ({photo.format}); {found}."
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
    st.plotly_chart(fig, key="photo_aligned", width="stretch")
    st.caption("Magenta circles: where the landmarks sit on an average training face.")


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
maps, seconds = posteriors.maps_for(info.name, step, key, aligned, landmark, None, None)
posteriors.show_maps(aligned, maps, style=style, key="photo_maps", zoom=zoom_in)
st.caption(f"{len(maps)} densities over every pixel in {seconds:.2f} s.")

modes = {}
for name in config.landmarks:
    found_maps, _ = posteriors.maps_for(info.name, step, key, aligned, name, None, (best,))
    modes[name] = tuple(found_maps[-1].mode)
points = alignment.to_photo(np.array(list(modes.values()), dtype=float))
on_photo = {name: (float(x), float(y)) for name, (x, y) in zip(modes, points, strict=True)}
st.plotly_chart(
    charts.landmarks_on_photo(
        photo.image,
        on_photo,
        title=f"Most likely positions on your photo, by {labels.encoder_short(best)}",
        view=_around(corners, photo.image.shape),
    ),
    key="photo_modes",
    width="stretch",
)
