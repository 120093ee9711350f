"""The five landmarks of a face from libfacedetection's YuNet, through the ``yuface`` wheel.

YuNet (Wu, Peng and Yu, "YuNet: A Tiny Millisecond-level Face Detector", Machine Intelligence
Research 2023) is a 0.5 MB convolutional detector whose weights ship inside the wheel: it
works offline. For each face it gives a box, a confidence and the five points CelebA
annotates: both eyes, the nose tip and both mouth corners. ``yuface`` has wheels for Linux and
Windows only; it is imported lazily, and ``available()`` says whether it can be used (the
callers fall back to OpenCV's Haar cascades).

Coordinates are ``(x, y)`` in the photo's pixels, continuous (pixel ``(i, j)`` has its centre
at ``(j + 0.5, i + 0.5)``).
"""

from __future__ import annotations

import ctypes
import logging
import time
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

from mist_core.photos.decode import Photo, _as_image
from mist_core.photos.face import Face

__all__ = ["available", "detect_five_points"]

logger = logging.getLogger(__name__)

#: YuNet runs on a copy whose longest side is at most this (yuface warns above 960 px).
_DETECT_SIDE = 640
#: Faces below this confidence (percent) are dropped: yuface's own default (0.5).
_MIN_CONFIDENCE = 50
#: YuNet answers in whole pixels; a whole pixel's centre is half a pixel on.
_PIXEL_CENTRE = 0.5

_warned = False
_omp: ctypes.CDLL | None = None


def _yuface() -> ModuleType | None:
    """The ``yuface`` module, or None (logged once) when it cannot be imported."""
    global _warned
    try:
        import yuface
    except (ImportError, OSError) as error:
        if not _warned:
            logger.warning(
                "the five-point face detector is not available (%s): faces are found with "
                "OpenCV's Haar cascades instead (pip install yuface; wheels for Linux and "
                "Windows)",
                error,
            )
            _warned = True
        return None
    return yuface


def available() -> bool:
    """Whether the five-point detector (``yuface``) can be used on this machine."""
    return _yuface() is not None


def _one_omp_thread(yuface: ModuleType) -> None:
    """Run YuNet on one OpenMP thread in the calling thread.

    The wheel bundles its own libgomp (not torch's), used by nothing else. With its default of
    one thread per core, a 512 px photo takes 0.45 s instead of 0.06 s on two cores that are
    busy with something else (measured), and the gain on idle cores is a few milliseconds.
    ``omp_set_num_threads`` only changes the calling thread's setting.
    """
    global _omp
    if _omp is None:
        libs = Path(yuface.__file__).parent.with_name("yuface.libs")
        found = sorted(libs.glob("libgomp*")) if libs.is_dir() else []
        if not found:
            return
        try:
            _omp = ctypes.CDLL(str(found[0]))
        except OSError:
            return
    _omp.omp_set_num_threads(1)


def detect_five_points(image: np.ndarray | Photo) -> Face | None:
    """The largest face YuNet finds in ``image`` (``[H, W, 3] uint8`` RGB), or None.

    YuNet runs on a copy whose longest side is at most 640 px (~0.06 s on one core), and its
    whole-pixel answers are taken at the pixels' centres and scaled back to ``image``.

    Returns:
        A ``Face`` with ``detector="yuface"``, its ``box``, its five ``points`` (``LANDMARKS``
        order), ``eyes`` = the first two points and ``score`` = the confidence in percent;
        None when no face reaches 50% confidence, or when ``yuface`` is not installed.
    """
    image = _as_image(image)
    yuface = _yuface()
    if yuface is None:
        return None
    t0 = time.perf_counter()
    height, width = image.shape[:2]
    k = min(1.0, _DETECT_SIDE / max(height, width))
    size = (max(1, round(width * k)), max(1, round(height * k)))
    small = image if k == 1.0 else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    sx, sy = size[0] / width, size[1] / height
    _one_omp_thread(yuface)
    bgr = np.ascontiguousarray(small[:, :, ::-1])
    confidences, boxes, landmarks = yuface.detect(bgr, conf=_MIN_CONFIDENCE / 100)
    if len(confidences) == 0:
        logger.debug("YuNet found no face (%.3f s)", time.perf_counter() - t0)
        return None
    boxes = boxes.astype(np.float64)
    i = int(np.lexsort((confidences, boxes[:, 2] * boxes[:, 3]))[-1])  # largest, then surest
    x, y, w, h = boxes[i]
    # Box edges scale as they are; points are whole pixels, taken at their centres.
    points = (landmarks[i].astype(np.float64).reshape(5, 2) + _PIXEL_CENTRE) / (sx, sy)
    named = tuple((float(px), float(py)) for px, py in points)
    face = Face(
        box=(float(x / sx), float(y / sy), float(w / sx), float(h / sy)),
        eyes=(named[0], named[1]),
        score=float(confidences[i]),
        points=named,  # type: ignore[arg-type]
        detector="yuface",
    )
    logger.debug("YuNet: %s (%.3f s)", face, time.perf_counter() - t0)
    return face
