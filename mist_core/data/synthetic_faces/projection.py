"""From the 3-D face frame to the image: the head pose's orthographic projection.

The face frame's origin (the midpoint between the eyes) lands on aligned CelebA's eye
midpoint plus the pose's shift, scaled from the 178 x 218 frame to the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mist_core.data.landmarks import CELEBA_EYE_MIDPOINT, CELEBA_HEIGHT, CELEBA_WIDTH
from mist_core.data.synthetic_faces.params import FaceParams

__all__ = ["Projection", "face_landmarks", "projection"]


@dataclass(frozen=True)
class Projection:
    """Image position of a face-frame point: ``origin + linear @ (X, Y) + depth * Z``.

    All in image pixels: ``origin`` ``[2]``, ``linear`` ``[2, 2]``, ``depth`` ``[2]``.
    """

    origin: np.ndarray  # [2]
    linear: np.ndarray  # [2, 2]
    depth: np.ndarray  # [2]

    def __call__(self, x: float, y: float, z: float) -> np.ndarray:
        """The image ``(x, y)`` of face-frame point ``(x, y, z)``: float64 ``[2]``."""
        return self.origin + self.linear @ np.array([x, y]) + self.depth * z


def projection(params: FaceParams) -> Projection:
    """The projection of ``params``' head pose onto its image (``params.image_size``)."""
    pose = params.pose
    cy, sy_ = math.cos(pose.yaw), math.sin(pose.yaw)
    cp, sp = math.cos(pose.pitch), math.sin(pose.pitch)
    cr, sr = math.cos(pose.roll), math.sin(pose.roll)
    yaw = np.array([[cy, 0.0, sy_], [0.0, 1.0, 0.0], [-sy_, 0.0, cy]])
    pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    roll = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    rotation = roll @ yaw @ pitch
    height, width = params.image_size
    stretch = np.diag([width / CELEBA_WIDTH, height / CELEBA_HEIGHT]) * pose.scale
    origin = np.array(
        [
            (CELEBA_EYE_MIDPOINT[0] + pose.shift_x) * width / CELEBA_WIDTH,
            (CELEBA_EYE_MIDPOINT[1] + pose.shift_y) * height / CELEBA_HEIGHT,
        ]
    )
    return Projection(origin, stretch @ rotation[:2, :2], stretch @ rotation[:2, 2])


def _landmark_points(params: FaceParams) -> dict[str, tuple[float, float, float]]:
    """Each landmark's ``(X, Y, Z)`` in the face frame."""
    g = params.geometry
    return {
        "left_eye": (-g.eye_half_spacing, 0.0, 0.0),
        "right_eye": (g.eye_half_spacing, 0.0, 0.0),
        "nose": (0.0, g.nose_drop, g.nose_depth),
        "left_mouth": (g.mouth_offset_x - g.mouth_half_width, g.mouth_drop, g.mouth_depth),
        "right_mouth": (g.mouth_offset_x + g.mouth_half_width, g.mouth_drop, g.mouth_depth),
    }


def face_landmarks(params: FaceParams) -> dict[str, np.ndarray]:
    """Exact landmark positions: name -> float64 array ``[2]`` = (x, y) in pixels."""
    project = projection(params)
    return {name: project(*point) for name, point in _landmark_points(params).items()}
