"""Finding the largest face in a photo: its five landmarks (YuNet), else its box and eyes.

``detect_face`` prefers the five-point detector (``yunet``: libfacedetection through the
``yuface`` wheel) and falls back to OpenCV's Haar cascades (face box, then the two eyes) when
that is not installed or finds nothing. Coordinates are ``(x, y)`` in pixels of the photo, x
to the right and y downward.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Literal

import cv2
import numpy as np

from mist_core.data.landmarks import CELEBA_LANDMARKS
from mist_core.photos.decode import Photo, _as_image
from mist_core.photos.face import Face
from mist_core.photos.yunet import detect_five_points

__all__ = ["Face", "detect_face"]

logger = logging.getLogger(__name__)

# Where a Haar face box (haarcascade_frontalface_alt2) falls in an aligned 178 x 218 image:
# centre (x, y) and width (the boxes are square). Measured by detecting faces on 122 of 150
# of the project's synthetic faces (drawn in the aligned-CelebA layout, rendered at twice the
# size and padded): mean centre (88.2, 122.9) (sd 2.2, 2.8), mean width 103.3 (sd 9.2). That
# is about 2.7 inter-eye distances wide, centred 0.24 inter-eye distances above the centroid
# of eyes and mouth corners, in line with the cascade's training geometry (eyes at ~0.39 of
# the box height). It is only used when the eyes cannot be found, and is not checked on real
# CelebA photos.
_FACE_BOX_CENTRE = (88.2, 122.9)
_FACE_BOX_WIDTH = 103.3
# The eyes relative to that box, in fractions of the box width from its top-left corner; used
# to choose among eye candidates.
_EYE_FRACTIONS = (
    (
        (CELEBA_LANDMARKS["left_eye"][0] - _FACE_BOX_CENTRE[0]) / _FACE_BOX_WIDTH + 0.5,
        (CELEBA_LANDMARKS["left_eye"][1] - _FACE_BOX_CENTRE[1]) / _FACE_BOX_WIDTH + 0.5,
    ),
    (
        (CELEBA_LANDMARKS["right_eye"][0] - _FACE_BOX_CENTRE[0]) / _FACE_BOX_WIDTH + 0.5,
        (CELEBA_LANDMARKS["right_eye"][1] - _FACE_BOX_CENTRE[1]) / _FACE_BOX_WIDTH + 0.5,
    ),
)

_DETECT_SIDE = 640  # face detection runs on a grey copy whose longest side is at most this
_EYE_ROI_WIDTH = 240  # the eye search region is resized to this width


_CASCADES: dict[str, cv2.CascadeClassifier] = {}


def _cascade(name: str) -> cv2.CascadeClassifier:
    """A Haar cascade shipped with OpenCV, loaded once."""
    cascade = _CASCADES.get(name)
    if cascade is None:
        path = cv2.data.haarcascades + name
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"could not load OpenCV's Haar cascade {path}")
        _CASCADES[name] = cascade
    return cascade


_Point = tuple[float, float]


def _best_eye_pair(
    centres: list[_Point], expected: list[_Point], face_width: float
) -> tuple[_Point, _Point] | None:
    """The pair of eye candidates closest to where the eyes are expected, or None.

    Only pairs with the image-left eye first, a plausible distance apart (``face_width`` is
    the face box's width, in the same units) and roughly level are considered.
    """
    best, best_cost = None, math.inf
    for a in centres:
        for b in centres:
            dx, dy = b[0] - a[0], b[1] - a[1]
            if not (0.25 * face_width <= dx <= 0.7 * face_width and abs(dy) <= 0.2 * face_width):
                continue
            cost = math.dist(a, expected[0]) + math.dist(b, expected[1])
            if cost < best_cost:
                best, best_cost = (a, b), cost
    return best


def _find_eyes(
    grey: np.ndarray, box: tuple[float, float, float, float]
) -> tuple[_Point, _Point] | None:
    """The two eye centres within the upper part of the face ``box`` of ``grey``, or None."""
    bx, by, bw, bh = box
    height, width = grey.shape
    x0, x1 = max(0, math.floor(bx)), min(width, math.ceil(bx + bw))
    y0, y1 = max(0, math.floor(by + 0.15 * bh)), min(height, math.ceil(by + 0.6 * bh))
    if x1 - x0 < 8 or y1 - y0 < 4:
        return None
    roi = grey[y0:y1, x0:x1]
    r = _EYE_ROI_WIDTH / (x1 - x0)
    size = (_EYE_ROI_WIDTH, max(1, round((y1 - y0) * r)))
    roi = cv2.resize(roi, size, interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    roi = cv2.equalizeHist(roi)
    ry = size[1] / (y1 - y0)
    bw_roi = bw * r
    min_eye = max(10, round(0.1 * bw_roi))
    max_eye = max(min_eye + 1, round(0.45 * bw_roi))
    expected = [((bx + fx * bw - x0) * r, (by + fy * bh - y0) * ry) for fx, fy in _EYE_FRACTIONS]
    for name in ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml"):
        found = _cascade(name).detectMultiScale(
            roi,
            scaleFactor=1.1,
            minNeighbors=4,
            minSize=(min_eye, min_eye),
            maxSize=(max_eye, max_eye),
        )
        centres = [(ex + ew / 2, ey + eh / 2) for ex, ey, ew, eh in found]
        best = _best_eye_pair(centres, expected, bw_roi)
        if best is not None:
            # ROI pixel units -> photo coordinates (the resize maps continuous coordinates
            # by pure scaling).
            return tuple((x0 + x / r, y0 + y / ry) for x, y in best)  # type: ignore[return-value]
    return None


def detect_face(
    image: np.ndarray | Photo,
    *,
    find_eyes: bool = True,
    detector: Literal["auto", "yuface", "haar"] = "auto",
) -> Face | None:
    """The largest face in ``image`` (``[H, W, 3] uint8`` RGB), or None.

    ``detector="auto"`` tries the five-point detector first (``yunet.detect_five_points``:
    box, confidence and the five landmarks, ~0.06 s) and, when it is not installed or finds
    no face, OpenCV's Haar cascades; ``"yuface"`` and ``"haar"`` use only that one.

    Haar: the face (``haarcascade_frontalface_alt2``) on a grey copy whose longest side is at
    most 640 px, then, with ``find_eyes``, the eyes (``haarcascade_eye``, or the eyeglasses
    variant) in the upper part of the face box at a finer scale. Takes ~0.1 s on a 2048 px
    photo. Faces narrower than ~5% of the photo's shorter side are not looked for.

    Returns:
        A ``Face`` in ``image``'s pixel coordinates. Its ``detector`` says which found it;
        ``points`` holds the five landmarks (``"yuface"`` only); ``eyes`` is None when the
        two eyes were not both found (``align_to_face`` then uses the face box).
    """
    if detector not in ("auto", "yuface", "haar"):
        raise ValueError(f"detector must be 'auto', 'yuface' or 'haar', got {detector!r}")
    image = _as_image(image)
    if detector != "haar":
        face = detect_five_points(image)
        if face is not None or detector == "yuface":
            return face
    return _detect_haar(image, find_eyes=find_eyes)


def _detect_haar(image: np.ndarray, *, find_eyes: bool) -> Face | None:
    """The largest face found by OpenCV's Haar cascades, and its eyes (``detect_face``)."""
    t0 = time.perf_counter()
    height, width = image.shape[:2]
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    k = min(1.0, _DETECT_SIDE / max(height, width))
    small_size = (max(1, round(width * k)), max(1, round(height * k)))
    small = grey if k == 1.0 else cv2.resize(grey, small_size, interpolation=cv2.INTER_AREA)
    sx, sy = small_size[0] / width, small_size[1] / height
    small = cv2.equalizeHist(small)
    min_face = max(20, round(0.05 * min(small.shape)))
    if min(small.shape) < min_face:
        return None
    boxes, neighbours = _cascade("haarcascade_frontalface_alt2.xml").detectMultiScale2(
        small, scaleFactor=1.1, minNeighbors=5, minSize=(min_face, min_face)
    )
    if len(boxes) == 0:
        logger.debug("no face found (%.3f s)", time.perf_counter() - t0)
        return None
    i = int(np.argmax([w * h for _, _, w, h in boxes]))
    x, y, w, h = (float(v) for v in boxes[i])
    box = (x / sx, y / sy, w / sx, h / sy)
    eyes = _find_eyes(grey, box) if find_eyes else None
    logger.debug("face %s, eyes %s (%.3f s)", box, eyes, time.perf_counter() - t0)
    return Face(box=box, eyes=eyes, score=float(neighbours[i]), detector="haar")
