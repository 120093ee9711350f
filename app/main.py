"""mist dashboard: what does a neural network know about where the eyes, nose and mouth are?

Start it with ``make app`` (``python app/serve.py``: the safe server settings and the Host
check; a plain ``streamlit run app/main.py`` has neither the settings outside the repository
root nor the Host check on plain requests).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the `ui` package beside this file

from ui import garbage, state  # noqa: E402

# once per process: Streamlit's full collection after every script run (every 2 s while a
# training is watched) then skips the ~420,000 objects the imports made (ui/garbage.py)
garbage.freeze_startup_objects()

st.set_page_config(
    page_title="mist · what networks know about faces",
    page_icon=":material/visibility:",
    layout="wide",
)

PAGES = Path(__file__).resolve().parent / "views"  # not "pages/": no automatic page list
navigation = st.navigation(
    [
        st.Page(PAGES / "train.py", title="Train", icon=":material/model_training:", default=True),
        st.Page(PAGES / "results.py", title="Results", icon=":material/bar_chart:"),
        st.Page(PAGES / "posteriors.py", title="Posteriors", icon=":material/my_location:"),
        st.Page(PAGES / "photo.py", title="Your photo", icon=":material/photo_camera:"),
        st.Page(PAGES / "about.py", title="About", icon=":material/info:"),
    ]
)
state.registry()  # start the job registry (and the warm-up of the default demo) once
with st.sidebar:
    st.caption(
        "**mist** measures, in *nats*, how sharply a network's view of a face lets you point "
        "at the eyes, the nose and the mouth corners."
    )
navigation.run()
