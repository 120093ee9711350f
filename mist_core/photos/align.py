"""Aligning a photo like aligned CelebA: a similarity transform onto a 178 x 218 image.

``align_to_face(face)``, ``align_to_points(points)`` or ``manual_alignment(shape, zoom,
offset)`` gives an ``Alignment`` from photo coordinates to the aligned image
(``CELEBA_SIZE``); ``Alignment.warp`` draws the aligned image, ``to_aligned``/``to_photo``
carry points both ways, so landmarks predicted on the aligned image can be drawn back on the
photo. ``align_photo`` chains detection and alignment, falling back to the centred manual
crop. ``fit_similarity`` is the least-squares similarity between two point sets.

Coordinate convention (as everywhere in this project): points are ``(x, y)`` in pixels, x to
the right and y downward; pixel (row ``i``, column ``j``) covers x in ``[j, j + 1)`` and y in
``[i, i + 1)``, so its centre is ``(j + 0.5, i + 0.5)``. Images are ``[H, W, 3] uint8`` RGB.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from mist_core.data.landmarks import CELEBA_LANDMARKS, CELEBA_SIZE, LANDMARKS
from mist_core.photos.decode import Photo, _as_image, _as_points
from mist_core.photos.detect import _FACE_BOX_CENTRE, _FACE_BOX_WIDTH, detect_face
from mist_core.photos.face import Face

__all__ = [
    "Alignment",
    "align_photo",
    "align_to_face",
    "align_to_points",
    "fit_similarity",
    "manual_alignment",
]

_BORDER_GREY = 127


@dataclass(frozen=True, eq=False)
class Alignment:
    """A similarity transform from photo coordinates to an aligned image.

    A photo point ``p = (x, y)`` (continuous coordinates, convention of the module docstring)
    goes to ``matrix[:, :2] @ p + matrix[:, 2]`` in the aligned image of ``size``; ``warp``
    draws that image so that the aligned pixel whose centre is there shows the photo at ``p``.

    Attributes:
        matrix: ``[2, 3] float64`` (read-only).
        size: ``(height, width)`` of the aligned image; ``CELEBA_SIZE`` by default.
        method: ``"five points"``, ``"eyes"``, ``"face box"`` or ``"manual"``.
    """

    matrix: np.ndarray
    size: tuple[int, int] = CELEBA_SIZE
    method: str = "manual"
    _inverse: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        matrix = np.array(self.matrix, dtype=np.float64)
        if matrix.shape != (2, 3) or not np.all(np.isfinite(matrix)):
            raise ValueError(f"matrix must be a finite [2, 3] array, got {self.matrix!r}")
        linear = matrix[:, :2]
        det = float(np.linalg.det(linear))
        if not abs(det) > 1e-12:
            raise ValueError("matrix must be invertible")
        inverse = np.empty((2, 3))
        inverse[:, :2] = np.linalg.inv(linear)
        inverse[:, 2] = -inverse[:, :2] @ matrix[:, 2]
        matrix.setflags(write=False)
        inverse.setflags(write=False)
        object.__setattr__(self, "matrix", matrix)
        object.__setattr__(self, "_inverse", inverse)
        height, width = self.size
        object.__setattr__(self, "size", (int(height), int(width)))

    @property
    def scale(self) -> float:
        """Aligned pixels per photo pixel."""
        return math.sqrt(abs(float(np.linalg.det(self.matrix[:, :2]))))

    def to_aligned(self, points: np.ndarray | Sequence) -> np.ndarray:
        """Photo points ``[N, 2]`` (or ``[2]``) -> aligned-image points of the same shape."""
        p = _as_points(points)
        return p @ self.matrix[:, :2].T + self.matrix[:, 2]

    def to_photo(self, points: np.ndarray | Sequence) -> np.ndarray:
        """Aligned-image points ``[N, 2]`` (or ``[2]``) -> photo points of the same shape."""
        p = _as_points(points)
        return p @ self._inverse[:, :2].T + self._inverse[:, 2]

    def warp(
        self,
        image: np.ndarray | Photo,
        *,
        border: Literal["replicate", "grey"] = "replicate",
    ) -> np.ndarray:
        """The aligned image, ``[size[0], size[1], 3] uint8``, from the photo ``[H, W, 3]``.

        Where the aligned frame reaches outside the photo, the photo's edge pixels are
        repeated (``border="replicate"``) or the area is mid-grey (``"grey"``). When
        shrinking by more than 2x, the photo is first reduced by area averaging, so the
        aligned image does not alias.
        """
        image = _as_image(image)
        if border not in ("replicate", "grey"):
            raise ValueError(f"border must be 'replicate' or 'grey', got {border!r}")
        out_h, out_w = self.size
        linear, shift = self.matrix[:, :2], self.matrix[:, 2]
        scale = self.scale
        if scale < 0.5:
            # The part of the photo that the aligned frame sees, with a margin.
            corners = self.to_photo([[0, 0], [out_w, 0], [0, out_h], [out_w, out_h]])
            margin = 2.0 / scale
            height, width = image.shape[:2]
            x0 = max(0, math.floor(corners[:, 0].min() - margin))
            x1 = min(width, math.ceil(corners[:, 0].max() + margin))
            y0 = max(0, math.floor(corners[:, 1].min() - margin))
            y1 = min(height, math.ceil(corners[:, 1].max() + margin))
            if x1 - x0 >= 2 and y1 - y0 >= 2:
                crop = image[y0:y1, x0:x1]
                size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
                image = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
                # q = D (p - o) in the reduced crop, so p = D^-1 q + o.
                d_inv = np.diag([(x1 - x0) / size[0], (y1 - y0) / size[1]])
                shift = linear @ np.array([x0, y0], dtype=np.float64) + shift
                linear = linear @ d_inv
        # Continuous coordinates are pixel indices + 0.5 in both images:
        # q_idx = A p_idx + (A (0.5, 0.5) + t - 0.5).
        index_matrix = np.empty((2, 3))
        index_matrix[:, :2] = linear
        index_matrix[:, 2] = linear @ np.array([0.5, 0.5]) + shift - 0.5
        if border == "replicate":
            mode, value = cv2.BORDER_REPLICATE, 0
        else:
            mode, value = cv2.BORDER_CONSTANT, (_BORDER_GREY,) * 3
        return cv2.warpAffine(
            np.ascontiguousarray(image),
            index_matrix,
            (out_w, out_h),
            flags=cv2.INTER_LINEAR,
            borderMode=mode,
            borderValue=value,
        )


def _similarity(scale_cos: float, scale_sin: float, tx: float, ty: float) -> np.ndarray:
    return np.array([[scale_cos, -scale_sin, tx], [scale_sin, scale_cos, ty]])


def fit_similarity(source: np.ndarray | Sequence, target: np.ndarray | Sequence) -> np.ndarray:
    r"""The similarity (rotation, uniform scale, shift; no reflection) that best maps
    ``source`` onto ``target`` in the least-squares sense, as a ``[2, 3]`` matrix.

    With points as complex numbers ``p_i = x_i + i y_i``, a similarity is ``q = a p + b``
    (``|a|`` the scale, ``arg a`` the angle), and the least-squares ``a`` is a complex linear
    regression on the centred points (Umeyama 1991, "Least-squares estimation of
    transformation parameters between two point patterns", without its reflection case):

    .. math:: a = \frac{\sum_i \overline{(p_i - \bar p)} (q_i - \bar q)}
                     {\sum_i |p_i - \bar p|^2}, \qquad b = \bar q - a \bar p

    Two points are mapped exactly; more are fitted.

    Args:
        source: ``[N, 2]`` points ``(x, y)``, N >= 2, not all the same.
        target: ``[N, 2]``.

    Returns:
        ``[2, 3] float64``: ``target ~ source @ M[:, :2].T + M[:, 2]``.
    """
    p, q = _as_points(source), _as_points(target)
    if p.ndim != 2 or p.shape != q.shape or len(p) < 2:
        raise ValueError(
            f"source and target must be [N, 2] with the same N >= 2, got {p.shape}, {q.shape}"
        )
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
        raise ValueError("the points must be finite")
    zp, zq = p[:, 0] + 1j * p[:, 1], q[:, 0] + 1j * q[:, 1]
    cp, cq = zp - zp.mean(), zq - zq.mean()
    spread = float(np.sum(np.abs(cp) ** 2))
    if not spread > 1e-12:
        raise ValueError("the source points all coincide: no scale or angle can be fitted")
    a = complex(np.sum(np.conj(cp) * cq) / spread)
    b = complex(zq.mean() - a * zp.mean())
    return _similarity(a.real, a.imag, b.real, b.imag)


_TEMPLATE = np.array([CELEBA_LANDMARKS[name] for name in LANDMARKS])


def align_to_points(
    points: np.ndarray | Sequence, image_shape: Sequence[int] | None = None
) -> Alignment:
    """The alignment putting five landmarks as close as they can be to aligned CelebA's.

    The least-squares similarity (``fit_similarity``) from ``points`` to
    ``CELEBA_LANDMARKS``: the eyes, the nose and the mouth corners all count, so a wrong
    point moves the frame by a fifth of its error, not all of it (``method="five points"``).

    Args:
        points: ``[5, 2]`` photo points in the order of ``mist_core.data.LANDMARKS``
            (image-left eye, image-right eye, nose tip, image-left and image-right mouth
            corners), e.g. ``Face.points``.
        image_shape: the photo's shape ``(H, W, ...)``, if known: checks the face is on it.

    Raises:
        ValueError: when there are not five points, they coincide, or (given
            ``image_shape``) they all lie off the photo.
    """
    p = _as_points(points)
    if p.shape != _TEMPLATE.shape:
        raise ValueError(
            f"points must be [5, 2], the landmarks {LANDMARKS} in that order, got {p.shape}"
        )
    if image_shape is not None:
        height, width = int(image_shape[0]), int(image_shape[1])
        inside = (p[:, 0] >= 0) & (p[:, 0] <= width) & (p[:, 1] >= 0) & (p[:, 1] <= height)
        if not inside.any():
            raise ValueError(
                f"the five points {p.tolist()} all lie outside the photo of "
                f"{width} x {height} pixels"
            )
    return Alignment(fit_similarity(p, _TEMPLATE), method="five points")


def align_to_face(face: Face, image_shape: Sequence[int] | None = None) -> Alignment:
    """The alignment putting ``face`` where aligned CelebA has its faces.

    With five points (``Face.points``, from the five-point detector): the least-squares
    similarity onto ``CELEBA_LANDMARKS`` (``align_to_points``, ``method="five points"``).
    Else, with eyes: the similarity (rotation, uniform scale, shift) that puts the two eye
    centres exactly on ``CELEBA_LANDMARKS``' eyes (``method="eyes"``). Else: the uniform
    scale and shift that put the face box where a Haar face box falls in aligned CelebA
    (``method="face box"``; no rotation, so less precise).

    Args:
        face: from ``detect_face`` (or made by hand), in photo pixels.
        image_shape: the photo's shape ``(H, W, ...)``, if known: checks the face is on it.

    Raises:
        ValueError: when the face box is empty or (given ``image_shape``) off the photo.
    """
    bx, by, bw, bh = (float(v) for v in face.box)
    if not (all(math.isfinite(v) for v in (bx, by, bw, bh)) and bw > 0 and bh > 0):
        raise ValueError(f"the face box must have a positive size, got {face.box}")
    if image_shape is not None:
        height, width = int(image_shape[0]), int(image_shape[1])
        if bx >= width or by >= height or bx + bw <= 0 or by + bh <= 0:
            raise ValueError(
                f"the face box {face.box} lies outside the photo of {width} x {height} pixels"
            )
    if face.points is not None:
        try:
            return align_to_points(face.points, image_shape)
        except ValueError as error:
            warnings.warn(f"{error}; aligning on the eyes instead", stacklevel=2)
    if face.eyes is not None:
        (lx, ly), (rx, ry) = face.eyes
        if math.dist((lx, ly), (rx, ry)) > 1e-6:
            source = complex(rx - lx, ry - ly)
            (tlx, tly), (trx, try_) = CELEBA_LANDMARKS["left_eye"], CELEBA_LANDMARKS["right_eye"]
            a = complex(trx - tlx, try_ - tly) / source
            b = complex(tlx, tly) - a * complex(lx, ly)
            return Alignment(_similarity(a.real, a.imag, b.real, b.imag), method="eyes")
        warnings.warn("the two eyes coincide; aligning on the face box instead", stacklevel=2)
    # Haar boxes are square; use the mean side if a hand-made box is not.
    s = _FACE_BOX_WIDTH / math.sqrt(bw * bh)
    cx, cy = bx + bw / 2, by + bh / 2
    tx, ty = _FACE_BOX_CENTRE[0] - s * cx, _FACE_BOX_CENTRE[1] - s * cy
    return Alignment(_similarity(s, 0.0, tx, ty), method="face box")


def manual_alignment(
    image_shape: Sequence[int],
    zoom: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
) -> Alignment:
    """A crop chosen by hand: works for any photo, with or without a face.

    The crop has aligned CelebA's aspect ratio (178 wide : 218 high). At ``zoom=1`` it is the
    largest such crop centred in the photo; ``zoom`` divides its size; ``offset = (dx, dy)``
    moves its centre by ``dx`` photo widths and ``dy`` photo heights (positive = right,
    down), then the crop is moved back inside the photo as needed (it always fits).

    Args:
        image_shape: the photo's shape ``(H, W, ...)``, each >= 1.
        zoom: in [1, 10].
        offset: each in [-1, 1].

    Returns:
        An ``Alignment`` with ``method="manual"`` onto ``CELEBA_SIZE``.
    """
    try:
        height, width = int(image_shape[0]), int(image_shape[1])
    except (TypeError, ValueError, IndexError):
        raise ValueError(
            f"image_shape must be (height, width, ...), got {image_shape!r}"
        ) from None
    if height < 1 or width < 1:
        raise ValueError(f"the photo must be at least 1 x 1 pixel, got shape {image_shape!r}")
    zoom = float(zoom)
    if not 1.0 <= zoom <= 10.0:  # also refuses NaN
        raise ValueError(f"zoom must be between 1 and 10 (1 = the whole photo), got {zoom}")
    try:
        dx, dy = (float(v) for v in offset)
    except (TypeError, ValueError):
        raise ValueError(f"offset must be a pair (dx, dy), got {offset!r}") from None
    if not (-1.0 <= dx <= 1.0 and -1.0 <= dy <= 1.0):
        raise ValueError(
            f"offset must be fractions of the photo's width and height in [-1, 1], got {offset}"
        )
    out_h, out_w = CELEBA_SIZE
    if width * out_h >= height * out_w:  # wider than 178:218: full height
        crop_w = height * out_w / out_h / zoom
    else:
        crop_w = width / zoom
    crop_h = crop_w * out_h / out_w
    cx = min(max(width / 2 + dx * width, crop_w / 2), width - crop_w / 2)
    cy = min(max(height / 2 + dy * height, crop_h / 2), height - crop_h / 2)
    s = out_w / crop_w
    return Alignment(_similarity(s, 0.0, out_w / 2 - s * cx, out_h / 2 - s * cy), method="manual")


def align_photo(image: np.ndarray | Photo, face: Face | None = None) -> Alignment:
    """Align on ``face`` (detected if not given); the centred manual crop if there is none.

    Check ``Alignment.method`` to tell the person what happened (``"manual"``: no face was
    found, let them adjust zoom and offset).
    """
    image = _as_image(image)
    if face is None:
        face = detect_face(image)
    if face is None:
        return manual_alignment(image.shape)
    return align_to_face(face, image.shape)
