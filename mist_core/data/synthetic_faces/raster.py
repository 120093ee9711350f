"""The canvas faces are drawn on, and the implicit shapes they are made of.

Every shape is a signed distance in face-frame units (> 0 inside) evaluated on the pixel
centres of a small window; ``soft`` turns it into a coverage in [0, 1] with an edge about one
pixel wide, and ``Canvas.paint`` alpha-composites a colour with that coverage.
"""

from __future__ import annotations

import math

import numpy as np

from mist_core.data.synthetic_faces.params import Colour, FaceParams
from mist_core.data.synthetic_faces.projection import projection

__all__ = [
    "Canvas",
    "Window",
    "ellipse_distance",
    "rotate",
    "segment_distance",
    "shade",
    "soft",
    "superellipse_distance",
]


def soft(distance: np.ndarray, pixel: float, softness: float = 1.0) -> np.ndarray:
    """Coverage from a signed distance (> 0 inside, face-frame units): a ramp ~1 px wide."""
    return np.clip(0.5 + distance / (pixel * softness), 0.0, 1.0)


def ellipse_distance(u: np.ndarray, v: np.ndarray, a: float, b: float | np.ndarray) -> np.ndarray:
    """Approximate signed distance to the ellipse (u/a)^2 + (v/b)^2 = 1 (> 0 inside)."""
    ua, vb = u / a, v / b
    f = ua * ua + vb * vb - 1.0
    grad = 2.0 * np.sqrt((ua / a) ** 2 + (vb / b) ** 2) + 1e-6
    return -f / grad


def superellipse_distance(
    u: np.ndarray, v: np.ndarray, a: float, b: float | np.ndarray, p: float, q: float = 2.0
) -> np.ndarray:
    """Approximate signed distance to |u/a|^p + |v/b|^q = 1 (> 0 inside)."""
    ua, vb = np.abs(u / a), np.abs(v / b)
    ua_p1, vb_q1 = _power(ua, p - 1.0), _power(vb, q - 1.0)
    f = ua_p1 * ua + vb_q1 * vb - 1.0
    grad = np.sqrt((p / a * ua_p1) ** 2 + (q / b * vb_q1) ** 2) + 1e-6
    return -f / grad


def _power(x: np.ndarray, exponent: float) -> np.ndarray:
    """``x ** exponent`` for x >= 0, by multiplication when the exponent is 1, 2 or 3."""
    if exponent == 1.0:
        return x
    if exponent == 2.0:
        return x * x
    if exponent == 3.0:
        return x * x * x
    return x**exponent


def segment_distance(
    u: np.ndarray, v: np.ndarray, start: tuple[float, float], end: tuple[float, float]
) -> np.ndarray:
    """Euclidean distance from (u, v) to the segment start-end."""
    du, dv = end[0] - start[0], end[1] - start[1]
    t = np.clip(((u - start[0]) * du + (v - start[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.hypot(u - start[0] - t * du, v - start[1] - t * dv)


def rotate(u: np.ndarray, v: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u, v) expressed in axes turned by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return c * u + s * v, -s * u + c * v


def shade(colour: Colour | np.ndarray, factor: float | tuple[float, ...]) -> np.ndarray:
    """``colour`` (RGB or [..., 3]) times ``factor``, clipped to [0, 1], as float32."""
    return np.clip(np.asarray(colour, dtype=np.float32) * np.asarray(factor), 0.0, 1.0).astype(
        np.float32
    )


Window = tuple[slice, slice]  # (rows, columns) of the image


class Canvas:
    """An RGB float image plus the map from pixel centres to face-frame coordinates.

    ``image`` is float32 ``[H, W, 3]`` (``(H, W) = params.image_size``); ``xs`` ``[W]`` and
    ``ys`` ``[H]`` are the pixel centres; ``pixel`` is the size of a pixel in face units.
    """

    def __init__(self, params: FaceParams) -> None:
        self.height, self.width = params.image_size
        self.image = np.zeros((self.height, self.width, 3), dtype=np.float32)
        self.projection = projection(params)
        inverse = np.linalg.inv(self.projection.linear)
        self._inverse = [
            [float(inverse[0, 0]), float(inverse[0, 1])],
            [float(inverse[1, 0]), float(inverse[1, 1])],
        ]
        parallax = inverse @ self.projection.depth
        self._parallax = (float(parallax[0]), float(parallax[1]))
        # Rounded outlines (face, head, hair) keep their on-screen size when the head turns,
        # unlike flat features, which foreshorten: widen them in the face frame to match.
        self.silhouette = (1.0 / math.cos(params.pose.yaw), 1.0 / math.cos(params.pose.pitch))
        linear = self.projection.linear
        self._linear = [
            [float(linear[0, 0]), float(linear[0, 1])],
            [float(linear[1, 0]), float(linear[1, 1])],
        ]
        self.pixel = float(math.sqrt(abs(np.linalg.det(inverse))))  # face units per pixel
        self.xs = np.arange(self.width, dtype=np.float32) + np.float32(0.5)
        self.ys = np.arange(self.height, dtype=np.float32) + np.float32(0.5)

    def window(
        self, cx: float, cy: float, z: float, radius: float, radius_y: float | None = None
    ) -> tuple[Window, np.ndarray, np.ndarray] | None:
        """Pixels of the face-frame box ``cx +- radius``, ``cy +- radius_y`` at depth ``z``.

        ``radius_y`` defaults to ``radius``. Returns the window's slices (the box's bounding
        box in the image, plus a 2-pixel margin) and the face-frame coordinates (u, v) of
        its pixel centres relative to (cx, cy), as seen at depth ``z``; ``None`` if the box
        is off the image.
        """
        centre = self.projection(cx, cy, z)
        ry = radius if radius_y is None else radius_y
        (m00, m01), (m10, m11) = self._linear
        reach_x = abs(m00) * radius + abs(m01) * ry + 2.0
        reach_y = abs(m10) * radius + abs(m11) * ry + 2.0
        x0 = max(int(math.floor(centre[0] - reach_x)), 0)
        x1 = min(int(math.ceil(centre[0] + reach_x)), self.width)
        y0 = max(int(math.floor(centre[1] - reach_y)), 0)
        y1 = min(int(math.ceil(centre[1] + reach_y)), self.height)
        if x0 >= x1 or y0 >= y1:
            return None
        dx = (self.xs[x0:x1] - np.float32(self.projection.origin[0]))[None, :]
        dy = (self.ys[y0:y1] - np.float32(self.projection.origin[1]))[:, None]
        (a, b), (c, d) = self._inverse
        u = a * dx + b * dy - (z * self._parallax[0] + cx)
        v = c * dx + d * dy - (z * self._parallax[1] + cy)
        return (slice(y0, y1), slice(x0, x1)), u, v

    def to_eye_depth(
        self, u: np.ndarray, v: np.ndarray, z: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Convert window coordinates seen at depth ``z`` to those seen at depth 0."""
        return u + z * self._parallax[0], v + z * self._parallax[1]

    def paint(self, window: Window, alpha: np.ndarray, colour: Colour | np.ndarray) -> None:
        """Composite ``colour`` (RGB or [h, w, 3]) over the window with coverage ``alpha``."""
        region = self.image[window]
        a = alpha.astype(np.float32, copy=False)[..., None]
        region += a * (np.asarray(colour, dtype=np.float32) - region)
