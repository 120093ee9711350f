"""Helpers for the dashboard's AppTest tests (imported by conftest.py and the tests).

Importing this module points the app at a scratch runs folder and switches off the
registry's warm-up (drawing 2,500 faces, ~25 s of CPU) before the app's modules load.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "app"
MAIN = APP_DIR / "main.py"
#: The folder of the page scripts main.py registers with st.navigation.
PAGES = "views"

os.environ["MIST_WARM_UP"] = "0"
os.environ.setdefault("MIST_RUNS_DIR", str(Path(tempfile.gettempdir()) / "mist-apptest-runs"))
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))  # as app/main.py does: `ui` is the package beside it

from ui import state  # noqa: E402,F401  (the same module object the app's scripts use)

from mist_core.data import SyntheticFaces  # noqa: E402
from mist_core.experiment import preset  # noqa: E402

#: Seconds one script run may take (loading a model or drawing posteriors on a busy CPU).
TIMEOUT = 120
#: A trained run in a few seconds: 6 steps of batch 8 at 40 x 32 pixels.
TINY = dict(
    train_size=48,
    test_size=16,
    image_size=(40, 32),
    batch_size=8,
    epochs=1,
    valid_fraction=0.0,
    encoders=("random_init", "trained"),
)
N_LANDMARKS = len(preset("demo-cpu").landmarks)


def tiny_config(**changes):
    return preset("demo-cpu", **(TINY | changes))


class one_torch_thread:
    """Torch on one thread while inside. On 2 shared cores, OpenMP threads spinning against
    another busy process turn a 4 s training into 40 s."""

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def new_app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)


def open_page(page: str | None = None):
    """The app run once (the Train page), then switched to ``<PAGES>/<page>.py`` and run."""
    at = new_app().run()
    assert_no_exception(at)
    if page is not None:
        at.switch_page(f"{PAGES}/{page}.py").run()
    return at


def assert_no_exception(at) -> None:
    assert not at.exception, "\n\n".join(
        f"{e.message}\n" + "\n".join(e.stack_trace) for e in at.exception
    )


def texts(elements) -> str:
    """The text of every element in an AppTest element list, one per line."""
    return "\n".join(str(e.value) for e in elements)


def charts(at) -> list:
    return list(at.get("plotly_chart"))


def face_jpeg(size: tuple[int, int] = (436, 356), canvas: tuple[int, int] = (900, 800)) -> bytes:
    """A drawn face (``size`` = height, width) pasted on a bigger grey canvas, as JPEG."""
    from PIL import Image

    face = SyntheticFaces(1, image_size=size).render(0)[0]
    out = np.full((*canvas, 3), 128, dtype=np.uint8)
    top, left = (canvas[0] - size[0]) // 3, (canvas[1] - size[1]) // 2
    out[top : top + size[0], left : left + size[1]] = face
    buffer = io.BytesIO()
    Image.fromarray(out).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


#: A PDF with a photo's name: the page must say what is wrong, not crash.
PDF_BYTES = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< >>\n%%EOF\n"
