"""Posteriors: where does each network think the landmark is, on one face?"""

from __future__ import annotations

import numpy as np
import streamlit as st
from ui import calibration, labels, posteriors, state, url

st.title("Posteriors")
st.markdown(
    "Pick a face and a landmark. The first picture shows where that landmark is **on faces "
    "in general**; the others show where each network **thinks it is on this face**, from "
    "its representation alone. The bright lines enclose the most likely region holding "
    "**50%** (cyan) and **90%** (yellow) of the probability; the green cross is the true "
    "position, the white dot the network's best guess. Smaller regions around the cross "
    "mean the network knows more. Under each picture: whether the cross lies inside the "
    "regions on this face, and how often they held it over all the test faces."
)

runs = state.runs_with_checkpoint()
if not runs:
    st.info("No trained model yet. Train one on the **Train** page first.")
    st.stop()

# The run, landmark, face and view live in the URL: a reload or a pasted link opens them.
by_name = {run.name: run for run in runs}
url.restore("post_run", "run", runs[0], parse=by_name.get, valid=lambda v: v in runs)
info, step, experiment = state.pick_trained_model(runs, key="post_run")
url.keep("run", info.name)  # always: a newer run must not change what a link shows

config = experiment.config
images = experiment.source_images("test")
landmarks = list(config.landmarks)
url.restore("post_landmark", "landmark", landmarks[0], valid=lambda v: v in landmarks)
styles = list(labels.POSTERIOR_STYLES)
url.restore("post_style", "view", styles[0], valid=lambda v: v in styles)
url.restore("post_index", "face", 0, parse=int, valid=lambda v: 0 <= v < len(images))


@st.cache_data(show_spinner=False, max_entries=8)
def thumbnails(run_name: str, count: int) -> list[np.ndarray]:
    source = state.load_experiment(run_name, step).source_images("test")
    return [_uint8(source[i]["image"]) for i in range(min(count, len(source)))]


def _uint8(image) -> np.ndarray:
    return (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()


left, middle, right = st.columns([2, 2, 3])
landmark, style, zoom = posteriors.view_controls(config.landmarks, left, middle, prefix="post")
found = calibration.run_calibration(info)
fits = found.report.recalibrations(landmark) if found.report is not None else {}
recalibrate = middle.toggle(
    "Recalibrated regions",
    value=bool(fits),
    key="post_recalibrated",
    disabled=not fits,
    help="On: each region's size is corrected on faces held out of training, so that it "
    "holds the truth as often as it says. Off: the regions as the networks draw them."
    if fits
    else "This run has no recalibration: the regions are drawn as the networks draw them.",
)
index = right.number_input(
    f"Face number (0 to {len(images) - 1}, test faces)", 0, len(images) - 1, key="post_index"
)
url.keep("landmark", landmark, landmarks[0])
url.keep("view", style, styles[0])
url.keep("face", int(index), 0)

with st.expander("Pick a face from the gallery", expanded=True):
    thumbs = thumbnails(info.name, 8)
    columns = st.columns(len(thumbs))
    for i, (column, thumb) in enumerate(zip(columns, thumbs, strict=True)):
        column.image(thumb, caption=f"Face {i}", width="stretch")
        column.button(  # a callback: the index input above is already drawn this run
            "Show",
            key=f"thumb_{i}",
            width="stretch",
            on_click=st.session_state.update,
            kwargs={"post_index": i},
        )

item = images[int(index)]
image = _uint8(item["image"])
truth = tuple(float(v) for v in item[landmark])
drawn = fits if recalibrate and fits else None
maps, seconds = posteriors.maps_for(
    info.name, step, f"test-{index}", image, landmark, truth, None, recalibration=drawn
)
if found.report is None:
    st.info(found.note)
elif drawn:
    st.caption(
        f"Regions recalibrated on {calibration.recalibrated_faces(drawn)} held-out faces so "
        "that they hold the truth as often as they say; switch off **Recalibrated regions** "
        "to see them as the networks draw them."
    )
else:
    why = "switched off" if fits else "this run held no faces out to fit it"
    st.caption(f"Regions as the networks draw them (recalibration {why}).")
posteriors.show_maps(
    image,
    maps,
    style=style,
    key="post",
    zoom=zoom,
    notes=calibration.map_notes(maps, found.report, landmark),
)
st.caption(
    f"Face {index} of the test set, {image.shape[1]} x {image.shape[0]} pixels; "
    f"{len(maps)} densities evaluated at every pixel in {seconds:.2f} s."
)
