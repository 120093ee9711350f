"""An example photo for people who have none at hand: scikit-image's astronaut.

NASA's public-domain portrait of astronaut Eileen Collins (512 x 512 RGB), shipped inside the
scikit-image wheel (``skimage.data.astronaut``): it works offline, and it is a real photo, so
a face detector's landmarks on it are a reference for networks trained on other faces.
"""

from __future__ import annotations

import io

from PIL import Image

__all__ = ["EXAMPLE_CREDIT", "example_available", "example_photo"]

#: Where the example photo comes from, in plain words.
EXAMPLE_CREDIT = (
    "NASA's public-domain portrait of astronaut Eileen Collins, shipped with scikit-image"
)


def example_available() -> bool:
    """Whether scikit-image (which holds the example photo) is installed."""
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return False
    return True


def example_photo() -> bytes:
    """The example photo as PNG bytes (~0.5 MB), as if uploaded (``load_photo`` reads them).

    Raises:
        ImportError: when scikit-image is not installed (``pip install scikit-image``).
    """
    try:
        from skimage import data
    except ImportError as error:
        raise ImportError(
            "the example photo comes with scikit-image: pip install scikit-image"
        ) from error
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()
