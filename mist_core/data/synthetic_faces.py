"""Procedurally drawn faces with exact landmark positions: the offline default dataset.

Every item is a cartoon-like frontal portrait in the layout of *aligned* CelebA (218 high,
178 wide by default) together with the five CelebA landmarks, computed from the sampled head
pose so that they are exact rather than annotated.

How a face is made
------------------
1. A head pose is sampled: scale, yaw, pitch, roll and a small shift. Facial features live
   in a 3-D face frame (units: pixels of a 178 x 218 image; origin at the midpoint between
   the eyes; ``X`` right, ``Y`` down, ``Z`` towards the camera). The eyes sit at ``Z = 0``,
   the nose tip in front of them, the face outline, hair and ears behind them, so a yaw
   moves the nose (and, the other way, the face outline) horizontally relative to the eyes.
   The projection is orthographic, so every flat feature at depth ``Z`` maps to the image by
   one affine map plus a depth-dependent parallax shift.
2. Appearance is sampled: skin tone, face outline, hair colour and style (short, fringe,
   long, buzz cut, big curly), eyes (shape, size, iris colour, gaze), eyebrows, nose
   (bridge shadow, nostrils, tip highlight), mouth (width, lip thickness, smile, open mouth
   with teeth, natural lips or lipstick), ears, neck and clothes, background (gradient,
   blobs or stripes), a lighting gradient, a colour cast and pixel noise. About 15% of
   faces wear glasses (frames around the eyes; lenses only tint multiplicatively, so pupils
   stay dark) and about 10% carry an occluder: a hand raised to the jaw, a hat or a scarf.
3. The image is drawn with numpy: each feature is an implicit shape (ellipse, superellipse,
   curved band or line segment) evaluated on the pixel centres of a small window, with a
   one-pixel soft edge, and alpha-composited over what is below.

Where the landmarks are on the drawing
--------------------------------------
* ``left_eye`` / ``right_eye``: the centre of the pupil (and iris) of the eye at the
  image-left / image-right, as in CelebA (so ``left_eye`` is the person's right eye). The
  gaze moves the white of the eye, never the iris, so the landmark is always on the pupil.
* ``nose``: the nose tip (a soft highlight), with the shadow under the nose and the
  nostrils just below it.
* ``left_mouth`` / ``right_mouth``: the lip corners. The lips extend slightly (about 2 px)
  beyond them and the dark line between the lips stops short of them, so the landmark pixel
  is lip coloured.
* Nothing is drawn over a landmark: the hairline is kept above the eyes, glasses frames
  surround the eyes, and every occluder is masked out within 7 px (at the 178-wide scale)
  of each landmark, so an occluder may cover part of the face but never a landmark.

Coordinate convention
---------------------
Landmarks are ``(x, y)`` in pixels, ``x`` to the right and ``y`` downward. Pixel (row ``i``,
column ``j``) covers ``x`` in ``[j, j + 1)`` and ``y`` in ``[i, i + 1)``; every shape is
sampled at the pixel centres ``(j + 0.5, i + 0.5)``. A landmark at ``(x, y)`` therefore lies
in pixel ``image[:, floor(y), floor(x)]``, and a landmark at ``(69.5, 111.5)`` is the centre
of pixel row 111, column 69.

Determinism and speed
---------------------
Item ``i`` of ``SyntheticFaces(n, seed)`` is drawn from ``numpy.random.default_rng([seed,
i])`` alone (the pixel noise from a seed drawn there too), so it is the same in every
process, in every DataLoader worker and in any access order; no global random state is
touched. Across machines it is the same for the same numpy version (numpy keeps the
``default_rng`` streams stable; only a platform's vectorised ``sin``/``hypot`` could flip a
rare pixel by one grey level).
Generating 1,000 default-size items (``dataset[i]``, tensors included) takes about 10 s on
one idle CPU core, i.e. about 10 ms per item (measured on a 2-core cloud VM; 14-29 s when
the other core's work competes for it)::

    python -c "import time; from mist_core.data import SyntheticFaces as S; d = S(1000); \\
    t = time.perf_counter(); [d[i] for i in range(len(d))]; print(time.perf_counter() - t)"
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mist_core.data.landmarks import LANDMARKS
from mist_core.data.stopping import check_stop

logger = logging.getLogger(__name__)

__all__ = [
    "CHUNK_FACES",
    "LANDMARKS",
    "TASK_FACES",
    "SyntheticFaces",
    "render_face",
]

"""Landmark names, in CelebA's order; "left" is the image-left."""

Colour = tuple[float, float, float]

_REF_HEIGHT, _REF_WIDTH = 218, 178
_EYE_MIDPOINT = (88.5, 111.5)  # (x, y) in the 178 x 218 frame: the aligned-CelebA mean
_MIN_SIZE, _MAX_SIZE = 32, 4096
_KEEP_OUT = 7.0  # occluders are masked out within this radius (178-wide units) of landmarks

_SKIN_TONES = np.array(
    [
        (0.98, 0.85, 0.76),
        (0.93, 0.76, 0.64),
        (0.84, 0.63, 0.48),
        (0.70, 0.48, 0.34),
        (0.52, 0.34, 0.23),
        (0.37, 0.23, 0.16),
    ]
)
_HAIR_COLOURS = (  # (colour, weight)
    ((0.06, 0.05, 0.05), 0.24),
    ((0.17, 0.11, 0.07), 0.22),
    ((0.35, 0.22, 0.12), 0.17),
    ((0.55, 0.40, 0.24), 0.10),
    ((0.84, 0.70, 0.44), 0.10),
    ((0.60, 0.25, 0.10), 0.05),
    ((0.58, 0.57, 0.55), 0.05),
    ((0.86, 0.85, 0.82), 0.03),
)
_IRIS_COLOURS = (
    (0.33, 0.19, 0.09),
    (0.20, 0.12, 0.07),
    (0.45, 0.37, 0.17),
    (0.30, 0.45, 0.25),
    (0.30, 0.45, 0.66),
    (0.45, 0.50, 0.55),
)
_LIPSTICKS = ((0.75, 0.08, 0.12), (0.85, 0.35, 0.50), (0.45, 0.08, 0.20), (0.90, 0.35, 0.30))
_HAIR_STYLES = ("short", "fringe", "long", "buzz", "curly")


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    """Head pose. Angles in radians; ``shift`` in pixels of the 178 x 218 frame.

    ``yaw > 0`` turns the nose towards the image-right, ``pitch > 0`` lifts it, ``roll > 0``
    rotates the face clockwise on screen (y points down).
    """

    scale: float
    yaw: float
    pitch: float
    roll: float
    shift_x: float
    shift_y: float


@dataclass(frozen=True)
class Geometry:
    """Where the landmarks sit in the 3-D face frame (178-wide pixel units, eyes at origin)."""

    eye_half_spacing: float
    nose_drop: float
    nose_depth: float
    mouth_drop: float
    mouth_half_width: float
    mouth_offset_x: float
    mouth_depth: float


@dataclass(frozen=True)
class FaceShape:
    """Face outline: an ellipse whose lower half narrows towards the chin, plus ears."""

    centre_y: float
    depth: float
    half_width: float
    half_height: float
    chin_taper: float
    ear_y: float
    ear_size: float


@dataclass(frozen=True)
class Hair:
    """Hair colour and style; ``hairline`` is the hair edge's height above the eyes (< 0)."""

    style: str
    colour: Colour
    volume: float
    hairline: float
    temple_drop: float
    wave_amplitude: float
    wave_frequency: float
    wave_phase: float
    length: float
    side_width: float
    strand_frequency: float


@dataclass(frozen=True)
class Eyes:
    """Eye shape (semi-axes of the white), iris/pupil radii, gaze (white's offset), brows."""

    half_width: float
    half_height: float
    tilt: float
    iris_radius: float
    pupil_radius: float
    iris_colour: Colour
    sclera_colour: Colour
    lash_colour: Colour
    lid_thickness: float
    gaze_x: float
    gaze_y: float
    catchlight: bool
    brow_colour: Colour
    brow_height: float
    brow_offset: float
    brow_half_length: float
    brow_thickness: float
    brow_arch: float
    brow_tilt: float


@dataclass(frozen=True)
class Nose:
    """Nose drawing: half width at the nostrils, nostril size, shading strength."""

    half_width: float
    nostril_size: float
    shadow: float
    highlight: float


@dataclass(frozen=True)
class Mouth:
    """Lip thickness at the centre, smile (centre drop vs. corners), opening and colours."""

    upper_lip: float
    lower_lip: float
    smile: float
    opening: float
    lip_colour: Colour
    teeth_colour: Colour


@dataclass(frozen=True)
class Glasses:
    """Spectacles: lens semi-axes and shape exponent, frame, multiplicative lens tint."""

    half_width: float
    half_height: float
    exponent: float
    offset_y: float
    thickness: float
    frame_colour: Colour
    tint: Colour


@dataclass(frozen=True)
class Occluder:
    """A hand at the jaw, a hat or a scarf; masked out around every landmark."""

    kind: str
    colour: Colour
    side: float
    x: float
    y: float
    width: float
    height: float
    angle: float


@dataclass(frozen=True)
class Scene:
    """Background, clothes, lighting gradient, colour cast and pixel noise."""

    background_style: str
    background_colours: tuple[Colour, Colour]
    background_angle: float
    blobs: tuple[tuple[float, float, float, Colour], ...]
    stripe_frequency: float
    clothes_colour: Colour
    shoulder_width: float
    light_angle: float
    light_strength: float
    ambient: float
    colour_cast: Colour
    noise_std: float
    noise_seed: int


@dataclass(frozen=True)
class FaceParams:
    """Everything that determines one face; ``render_face`` turns it into pixels.

    ``image_size`` is ``(height, width)``; ``skin`` an RGB colour in [0, 1].
    """

    image_size: tuple[int, int]
    pose: Pose
    geometry: Geometry
    skin: Colour
    face: FaceShape
    hair: Hair
    eyes: Eyes
    nose: Nose
    mouth: Mouth
    glasses: Glasses | None
    occluder: Occluder | None
    scene: Scene


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _normal(rng: np.random.Generator, mean: float, std: float, bound: float) -> float:
    """Normal draw clipped to ``mean +- bound``."""
    return min(max(float(rng.normal(mean, std)), mean - bound), mean + bound)


def _colour(values: np.ndarray | tuple[float, ...]) -> Colour:
    r, g, b = (float(v) for v in np.clip(np.asarray(values, dtype=float), 0.0, 1.0))
    return (r, g, b)


def _jitter(rng: np.random.Generator, colour: tuple[float, ...], std: float) -> Colour:
    return _colour(np.asarray(colour) + rng.normal(0.0, std, 3))


def _random_colour(rng: np.random.Generator, low: float = 0.05, high: float = 0.95) -> Colour:
    return _colour(rng.uniform(low, high, 3))


def sample_face_params(
    rng: np.random.Generator, image_size: tuple[int, int] = (_REF_HEIGHT, _REF_WIDTH)
) -> FaceParams:
    """Draw every parameter of one face from ``rng`` (and from nothing else)."""
    pose = Pose(
        scale=_normal(rng, 1.0, 0.04, 0.12),
        yaw=_normal(rng, 0.0, 0.16, 0.4),
        pitch=_normal(rng, 0.0, 0.08, 0.2),
        roll=_normal(rng, 0.0, 0.04, 0.12),
        shift_x=_normal(rng, 0.0, 1.8, 5.0),
        shift_y=_normal(rng, 0.0, 1.8, 5.0),
    )
    geometry = Geometry(
        eye_half_spacing=_normal(rng, 19.25, 0.6, 2.0),
        nose_drop=_normal(rng, 23.0, 1.5, 4.0),
        nose_depth=_normal(rng, 22.0, 2.0, 5.0),
        mouth_drop=_normal(rng, 41.0, 1.8, 5.0),
        mouth_half_width=_normal(rng, 16.0, 1.3, 4.0),
        mouth_offset_x=_normal(rng, 0.0, 0.4, 1.0),
        mouth_depth=_normal(rng, 6.0, 1.0, 3.0),
    )

    tone = _uniform(rng, 0.0, len(_SKIN_TONES) - 1.0)
    low = int(math.floor(tone))
    high = min(low + 1, len(_SKIN_TONES) - 1)
    skin_base = _SKIN_TONES[low] * (1.0 - (tone - low)) + _SKIN_TONES[high] * (tone - low)
    skin = _jitter(rng, tuple(skin_base), 0.025)

    face = FaceShape(
        centre_y=_uniform(rng, 8.0, 14.0),
        depth=-25.0,
        half_width=_uniform(rng, 41.0, 48.0),
        half_height=_uniform(rng, 62.0, 70.0),
        chin_taper=_uniform(rng, 0.05, 0.35),
        ear_y=_uniform(rng, 2.0, 9.0),
        ear_size=_uniform(rng, 0.85, 1.15),
    )

    weights = np.array([w for _, w in _HAIR_COLOURS])
    hair_choice = int(rng.choice(len(_HAIR_COLOURS), p=weights / weights.sum()))
    hair_colour = (
        _random_colour(rng, 0.1, 0.8)
        if rng.random() < 0.04
        else _jitter(rng, _HAIR_COLOURS[hair_choice][0], 0.025)
    )
    style = _HAIR_STYLES[int(rng.choice(5, p=[0.34, 0.2, 0.28, 0.08, 0.10]))]
    hairline = _uniform(rng, -26.0, -18.0) if style == "fringe" else _uniform(rng, -44.0, -28.0)
    temple_drop = _uniform(rng, 8.0, 36.0)
    # Keep the hair above the eyes: at the eyes' outer corners the hairline stays <= -9.
    reach = (geometry.eye_half_spacing + 12.0) / face.half_width
    temple_drop = min(temple_drop, (-9.0 - hairline) / reach**2)
    hair = Hair(
        style=style,
        colour=hair_colour,
        volume=_uniform(rng, 14.0, 24.0) if style == "curly" else _uniform(rng, 2.0, 9.0),
        hairline=hairline,
        temple_drop=temple_drop,
        wave_amplitude=_uniform(rng, 0.0, 2.5),
        wave_frequency=_uniform(rng, 0.2, 0.6),
        wave_phase=_uniform(rng, 0.0, 2 * math.pi),
        length=_uniform(rng, 10.0, 75.0),
        side_width=_uniform(rng, 6.0, 16.0),
        strand_frequency=_uniform(rng, 30.0, 80.0),
    )

    brow_base = np.asarray(hair_colour) * 0.7 if sum(hair_colour) < 1.5 else (0.45, 0.35, 0.22)
    eye_half_height = _uniform(rng, 2.9, 4.3)
    eyes = Eyes(
        half_width=_uniform(rng, 6.2, 8.5),
        half_height=eye_half_height,
        tilt=_uniform(rng, -0.12, 0.12),
        iris_radius=_uniform(rng, 3.1, 3.9),
        pupil_radius=_uniform(rng, 1.5, 1.9),
        iris_colour=_jitter(rng, _IRIS_COLOURS[int(rng.integers(len(_IRIS_COLOURS)))], 0.03),
        sclera_colour=_jitter(rng, (0.94, 0.93, 0.9), 0.02),
        lash_colour=_jitter(rng, (0.08, 0.06, 0.06), 0.02),
        lid_thickness=_uniform(rng, 0.7, 1.5),
        gaze_x=_normal(rng, 0.0, 0.8, 1.8),
        gaze_y=_normal(rng, 0.0, 0.2, 0.4),
        catchlight=bool(rng.random() < 0.7),
        brow_colour=_jitter(rng, tuple(brow_base), 0.02),
        brow_height=_uniform(rng, 9.0, 13.0),
        brow_offset=_uniform(rng, -1.0, 2.5),
        brow_half_length=_uniform(rng, 8.5, 12.0),
        brow_thickness=_uniform(rng, 1.1, 2.4),
        brow_arch=_uniform(rng, 0.5, 3.0),
        brow_tilt=_uniform(rng, -0.12, 0.15),
    )
    nose = Nose(
        half_width=_uniform(rng, 5.5, 8.0),
        nostril_size=_uniform(rng, 0.8, 1.2),
        shadow=_uniform(rng, 0.35, 0.7),
        highlight=_uniform(rng, 0.25, 0.6),
    )

    lip_natural = np.asarray(skin) * (0.85, 0.55, 0.58) + (0.12, 0.0, 0.03)
    lip = (
        _jitter(rng, _LIPSTICKS[int(rng.integers(len(_LIPSTICKS)))], 0.03)
        if rng.random() < 0.15
        else _jitter(rng, tuple(lip_natural), 0.02)
    )
    mouth = Mouth(
        upper_lip=_uniform(rng, 2.3, 3.8),
        lower_lip=_uniform(rng, 3.0, 5.0),
        smile=_uniform(rng, -1.0, 3.0),
        opening=_uniform(rng, 1.0, 2.6) if rng.random() < 0.2 else _uniform(rng, 0.4, 0.7),
        lip_colour=lip,
        teeth_colour=_jitter(rng, (0.92, 0.9, 0.82), 0.02),
    )

    glasses = None
    if rng.random() < 0.15:
        dark = rng.random() < 0.6
        glasses = Glasses(
            half_width=_uniform(rng, 10.5, 12.5),
            half_height=_uniform(rng, 7.5, 9.5),
            exponent=_uniform(rng, 2.0, 4.0),
            offset_y=_uniform(rng, -0.5, 1.5),
            thickness=_uniform(rng, 0.8, 1.8),
            frame_colour=_random_colour(rng, 0.0, 0.15) if dark else _random_colour(rng),
            tint=_colour(rng.uniform(0.8, 1.0, 3)),
        )

    occluder = None
    if rng.random() < 0.10:
        kind = ("hand", "hat", "scarf")[int(rng.integers(3))]
        if kind == "hand":
            occ_colour = skin if rng.random() < 0.7 else _jitter(rng, tuple(_SKIN_TONES[2]), 0.1)
        else:
            occ_colour = _random_colour(rng)
        occluder = Occluder(
            kind=kind,
            colour=occ_colour,
            side=-1.0 if rng.random() < 0.5 else 1.0,
            x=_uniform(rng, 18.0, 34.0),
            y=_uniform(rng, 0.0, 10.0),
            width=_uniform(rng, 11.0, 15.0),
            height=_uniform(rng, 12.0, 28.0),
            angle=_uniform(rng, -0.5, 0.5),
        )

    background_style = ("gradient", "blobs", "stripes")[int(rng.choice(3, p=[0.4, 0.4, 0.2]))]
    n_blobs = int(rng.integers(1, 5)) if background_style == "blobs" else 0
    blobs = tuple(
        (
            _uniform(rng, 0.0, _REF_WIDTH),
            _uniform(rng, 0.0, _REF_HEIGHT),
            _uniform(rng, 15.0, 55.0),
            _random_colour(rng),
        )
        for _ in range(n_blobs)
    )
    scene = Scene(
        background_style=background_style,
        background_colours=(_random_colour(rng), _random_colour(rng)),
        background_angle=_uniform(rng, 0.0, 2 * math.pi),
        blobs=blobs,
        stripe_frequency=_uniform(rng, 0.08, 0.35),
        clothes_colour=_random_colour(rng),
        shoulder_width=_uniform(rng, 62.0, 92.0),
        light_angle=_uniform(rng, 0.0, 2 * math.pi),
        light_strength=_uniform(rng, 0.0, 0.3),
        ambient=_uniform(rng, 0.85, 1.1),
        colour_cast=_colour(rng.normal(1.0, 0.04, 3)),
        noise_std=_uniform(rng, 0.004, 0.025),
        noise_seed=int(rng.integers(2**31)),
    )
    return FaceParams(
        image_size=(int(image_size[0]), int(image_size[1])),
        pose=pose,
        geometry=geometry,
        skin=skin,
        face=face,
        hair=hair,
        eyes=eyes,
        nose=nose,
        mouth=mouth,
        glasses=glasses,
        occluder=occluder,
        scene=scene,
    )


# --------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Projection:
    """Image position of a face-frame point: ``origin + linear @ (X, Y) + depth * Z``."""

    origin: np.ndarray  # [2]
    linear: np.ndarray  # [2, 2]
    depth: np.ndarray  # [2]

    def __call__(self, x: float, y: float, z: float) -> np.ndarray:
        return self.origin + self.linear @ np.array([x, y]) + self.depth * z


def _projection(params: FaceParams) -> _Projection:
    pose = params.pose
    cy, sy_ = math.cos(pose.yaw), math.sin(pose.yaw)
    cp, sp = math.cos(pose.pitch), math.sin(pose.pitch)
    cr, sr = math.cos(pose.roll), math.sin(pose.roll)
    yaw = np.array([[cy, 0.0, sy_], [0.0, 1.0, 0.0], [-sy_, 0.0, cy]])
    pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    roll = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    rotation = roll @ yaw @ pitch
    height, width = params.image_size
    stretch = np.diag([width / _REF_WIDTH, height / _REF_HEIGHT]) * pose.scale
    origin = np.array(
        [
            (_EYE_MIDPOINT[0] + pose.shift_x) * width / _REF_WIDTH,
            (_EYE_MIDPOINT[1] + pose.shift_y) * height / _REF_HEIGHT,
        ]
    )
    return _Projection(origin, stretch @ rotation[:2, :2], stretch @ rotation[:2, 2])


def _landmark_points(params: FaceParams) -> dict[str, tuple[float, float, float]]:
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
    project = _projection(params)
    return {name: project(*point) for name, point in _landmark_points(params).items()}


# --------------------------------------------------------------------------------------------
# Drawing primitives
# --------------------------------------------------------------------------------------------


def _soft(distance: np.ndarray, pixel: float, softness: float = 1.0) -> np.ndarray:
    """Coverage from a signed distance (> 0 inside, face-frame units): a ramp ~1 px wide."""
    return np.clip(0.5 + distance / (pixel * softness), 0.0, 1.0)


def _ellipse_distance(u: np.ndarray, v: np.ndarray, a: float, b: float | np.ndarray) -> np.ndarray:
    """Approximate signed distance to the ellipse (u/a)^2 + (v/b)^2 = 1 (> 0 inside)."""
    ua, vb = u / a, v / b
    f = ua * ua + vb * vb - 1.0
    grad = 2.0 * np.sqrt((ua / a) ** 2 + (vb / b) ** 2) + 1e-6
    return -f / grad


def _superellipse_distance(
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


def _segment_distance(
    u: np.ndarray, v: np.ndarray, start: tuple[float, float], end: tuple[float, float]
) -> np.ndarray:
    """Euclidean distance from (u, v) to the segment start-end."""
    du, dv = end[0] - start[0], end[1] - start[1]
    t = np.clip(((u - start[0]) * du + (v - start[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.hypot(u - start[0] - t * du, v - start[1] - t * dv)


def _rotate(u: np.ndarray, v: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    return c * u + s * v, -s * u + c * v


def _shade(colour: Colour | np.ndarray, factor: float | tuple[float, ...]) -> np.ndarray:
    return np.clip(np.asarray(colour, dtype=np.float32) * np.asarray(factor), 0.0, 1.0).astype(
        np.float32
    )


Window = tuple[slice, slice]


class _Canvas:
    """An RGB float image plus the map from pixel centres to face-frame coordinates."""

    def __init__(self, params: FaceParams) -> None:
        self.height, self.width = params.image_size
        self.image = np.zeros((self.height, self.width, 3), dtype=np.float32)
        self.projection = _projection(params)
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


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def _draw_background(canvas: _Canvas, scene: Scene) -> None:
    sx, sy = canvas.width / _REF_WIDTH, canvas.height / _REF_HEIGHT
    xs, ys = canvas.xs[None, :] / sx, canvas.ys[:, None] / sy  # in 178 x 218 units
    c, s = math.cos(scene.background_angle), math.sin(scene.background_angle)
    t = (c * (xs - _REF_WIDTH / 2) + s * (ys - _REF_HEIGHT / 2)) / 140.0 + 0.5
    if scene.background_style == "stripes":
        t = t + 0.25 * np.sin(scene.stripe_frequency * (s * xs - c * ys))
    t = np.clip(t, 0.0, 1.0)[..., None]
    first, second = (np.asarray(col, dtype=np.float32) for col in scene.background_colours)
    canvas.image[:] = first + t * (second - first)
    for bx, by, radius, colour in scene.blobs:
        x0, x1 = max(int((bx - radius) * sx), 0), min(int((bx + radius) * sx) + 1, canvas.width)
        y0, y1 = max(int((by - radius) * sy), 0), min(int((by + radius) * sy) + 1, canvas.height)
        if x0 >= x1 or y0 >= y1:
            continue
        r = np.hypot(xs[:, x0:x1] - bx, ys[y0:y1, :] - by)
        alpha = 0.6 * np.clip((radius - r) / 10.0, 0.0, 1.0)
        canvas.paint((slice(y0, y1), slice(x0, x1)), alpha, colour)


def _draw_body(canvas: _Canvas, params: FaceParams) -> None:
    face, scene, skin = params.face, params.scene, params.skin
    chin = face.centre_y + face.half_height
    neck_half = face.half_width * 0.52
    found = canvas.window(0.0, chin + 20.0, face.depth - 10.0, neck_half + 2.0, 47.0)
    if found is not None:
        window, u, v = found
        d = _superellipse_distance(u, v, neck_half, 45.0, 4.0)
        shade = np.float32(0.8) + np.float32(0.1) * np.clip(v / 40.0, 0.0, 1.0)[..., None]
        canvas.paint(window, _soft(d, canvas.pixel, 1.5), _shade(skin, 0.78) * shade)
    top = chin + 26.0
    found = canvas.window(0.0, top + 45.0, face.depth - 20.0, scene.shoulder_width + 2.0, 50.0)
    if found is not None:
        window, u, v = found
        d = _superellipse_distance(u, v, scene.shoulder_width, 48.0, 3.0)
        alpha = _soft(d, canvas.pixel, 1.5)
        neckline = _soft(_ellipse_distance(u, v + 45.0, neck_half + 1.5, 14.0), canvas.pixel)
        alpha *= 1.0 - neckline
        fold = 1.0 - 0.15 * np.clip(np.abs(u) / scene.shoulder_width, 0.0, 1.0) ** 2
        canvas.paint(window, alpha, _shade(scene.clothes_colour, 1.0) * fold[..., None])


def _hair_texture(hair: Hair, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Hair colour field [h, w, 3]: strands as a soft angular stripe pattern."""
    angle = np.arctan2(u, -v - 20.0)
    f = hair.strand_frequency
    strands = 1.0 + 0.07 * np.sin(f * angle) + 0.05 * np.sin(2.7 * f * angle + 1.3)
    if hair.style == "curly":
        strands = strands * (1.0 + 0.1 * np.sin(0.9 * u) * np.sin(0.9 * v))
    return _shade(hair.colour, 1.0) * strands[..., None].astype(np.float32)


def _draw_back_hair(canvas: _Canvas, params: FaceParams) -> None:
    """Long hair falling behind the face and shoulders."""
    face, hair = params.face, params.hair
    if hair.style != "long":
        return
    sw, sh = canvas.silhouette
    top = face.centre_y - face.half_height * sh - hair.volume
    bottom = face.centre_y + face.half_height * sh + hair.length
    half_w = face.half_width * sw + hair.side_width
    centre, half_h = (top + bottom) / 2, (bottom - top) / 2
    found = canvas.window(0.0, centre, face.depth - 12.0, half_w + 2.0, half_h + 2.0)
    if found is None:
        return
    window, u, v = found
    d = _superellipse_distance(u, v, half_w, half_h, 3.0, 3.0)
    colour = _hair_texture(hair, u, v + centre - face.centre_y) * np.float32(0.85)
    canvas.paint(window, _soft(d, canvas.pixel, 1.5), colour)


def _draw_face(canvas: _Canvas, params: FaceParams) -> None:
    face, skin = params.face, params.skin
    sw, sh = canvas.silhouette
    half_w, half_h = face.half_width * sw, face.half_height * sh
    # Ears behind the outline (the face covers their inner part; long hair hides them).
    for side in (-1.0, 1.0) if params.hair.style != "long" else ():
        ex = side * (half_w - 1.0)
        found = canvas.window(ex, face.ear_y, face.depth - 5.0, 14.0)
        if found is None:
            continue
        window, u, v = found
        size = face.ear_size
        canvas.paint(
            window,
            _soft(_ellipse_distance(u, v, 6.0 * size, 11.0 * size), canvas.pixel),
            _shade(skin, 0.9),
        )
        inner = _ellipse_distance(u - side * 1.5, v, 3.0 * size, 7.0 * size)
        canvas.paint(window, 0.5 * _soft(inner, canvas.pixel, 2.0), _shade(skin, 0.7))
    found = canvas.window(0.0, face.centre_y, face.depth, half_w + 2.0, half_h + 2.0)
    if found is None:
        return
    window, u, v = found
    narrowing = 1.0 - face.chin_taper * np.clip(v / half_h, 0.0, 1.0) ** 2
    d = _ellipse_distance(u / narrowing, v, half_w, half_h) * narrowing
    rho2 = (u / (half_w * narrowing)) ** 2 + (v / half_h) ** 2
    shading = (1.0 - 0.2 * np.clip(rho2, 0.0, 1.0) ** 2)[..., None]
    canvas.paint(window, _soft(d, canvas.pixel), _shade(skin, 1.0) * shading)


def _draw_eyes(canvas: _Canvas, params: FaceParams) -> None:
    g, eyes, skin = params.geometry, params.eyes, params.skin
    px = canvas.pixel
    for side in (-1.0, 1.0):
        found = canvas.window(side * g.eye_half_spacing, 0.0, 0.0, eyes.half_width + 6.0)
        if found is None:
            continue
        window, u, v = found  # relative to the iris centre, i.e. the landmark
        # Eye socket shadow.
        socket = _ellipse_distance(u, v + 1.0, eyes.half_width + 3.5, eyes.half_height + 3.5)
        canvas.paint(window, 0.18 * _soft(socket, px, 4.0), _shade(skin, 0.7))
        # The white: centred at (iris - gaze), tilted upwards at the outer corner.
        su, sv = _rotate(u + eyes.gaze_x * side, v + eyes.gaze_y, -side * eyes.tilt)
        white = _soft(_ellipse_distance(su, sv, eyes.half_width, eyes.half_height), px)
        canvas.paint(window, white, eyes.sclera_colour)
        # Iris with a darker rim, then the pupil; both only inside the white.
        radius = np.hypot(u, v)
        canvas.paint(
            window, white * _soft(eyes.iris_radius - radius, px), _shade(eyes.iris_colour, 0.6)
        )
        canvas.paint(window, white * _soft(eyes.iris_radius - 0.7 - radius, px), eyes.iris_colour)
        canvas.paint(window, white * _soft(eyes.pupil_radius - radius, px), (0.03, 0.03, 0.035))
        if eyes.catchlight:
            glint = np.hypot(u + 1.1, v + 1.1)
            canvas.paint(window, 0.8 * white * _soft(0.6 - glint, px), (0.95, 0.95, 0.95))
        # Upper lid line (fades towards the corners) and a faint lower lid.
        lid = np.abs(_ellipse_distance(su, sv, eyes.half_width + 0.3, eyes.half_height + 0.3))
        upper = np.clip((0.4 * eyes.half_height - sv) / (0.6 * eyes.half_height), 0.0, 1.0)
        canvas.paint(window, upper * _soft(eyes.lid_thickness - lid, px), eyes.lash_colour)
        lower = np.clip(sv / eyes.half_height, 0.0, 1.0)
        canvas.paint(window, 0.35 * lower * _soft(0.5 - lid, px), _shade(skin, 0.6))


def _draw_brows(canvas: _Canvas, params: FaceParams) -> None:
    g, eyes = params.geometry, params.eyes
    length = eyes.brow_half_length
    for side in (-1.0, 1.0):
        cx = side * (g.eye_half_spacing + eyes.brow_offset)
        found = canvas.window(cx, -eyes.brow_height, 0.0, length + 4.0)
        if found is None:
            continue
        window, u, v = found
        u, v = _rotate(u, v, side * eyes.brow_tilt)
        v = v + eyes.brow_arch * (1.0 - (u / length) ** 2)  # arched: the middle is higher
        # Thicker at the inner end (towards the nose).
        thickness = eyes.brow_thickness * (1.0 - 0.35 * np.clip(side * u / length, -1.0, 1.0))
        d = _ellipse_distance(u, v, length, thickness)
        canvas.paint(window, 0.9 * _soft(d, canvas.pixel, 1.3), eyes.brow_colour)


def _draw_nose(canvas: _Canvas, params: FaceParams) -> None:
    g, nose, skin = params.geometry, params.nose, params.skin
    px = canvas.pixel
    tip_y, tip_z = g.nose_drop, g.nose_depth
    # Bridge shadow on the side away from the light.
    side = -1.0 if math.cos(params.scene.light_angle) > 0 else 1.0
    found = canvas.window(0.0, tip_y / 2.0, tip_z / 2.0, tip_y / 2.0 + 6.0)
    if found is not None:
        window, u, v = found
        d = _segment_distance(
            u, v, (side * 3.5, 3.0 - tip_y / 2.0), (side * 5.0, tip_y / 2.0 - 4.0)
        )
        canvas.paint(window, 0.35 * nose.shadow * _soft(1.6 - d, px, 2.5), _shade(skin, 0.7))
    found = canvas.window(0.0, tip_y, tip_z, nose.half_width + 5.0)
    if found is None:
        return
    window, u, v = found  # relative to the nose tip, i.e. the landmark
    # Wings of the nose and the shadow under it.
    for wing in (-1.0, 1.0):
        ring = np.abs(_ellipse_distance(u - wing * (nose.half_width - 2.5), v - 0.5, 3.0, 3.2))
        outer = np.clip(wing * u / 2.0, 0.0, 1.0)
        canvas.paint(
            window, 0.45 * nose.shadow * outer * _soft(0.7 - ring, px, 1.5), _shade(skin, 0.65)
        )
    under = _ellipse_distance(u, v - 3.2, nose.half_width - 0.5, 2.0)
    canvas.paint(window, nose.shadow * _soft(under, px, 2.0), _shade(skin, 0.72))
    size = nose.nostril_size
    for wing in (-1.0, 1.0):
        nu, nv = _rotate(u - wing * 0.45 * nose.half_width, v - 2.7, wing * 0.35)
        nostril = _ellipse_distance(nu, nv, 1.9 * size, 1.0 * size)
        canvas.paint(window, 0.9 * _soft(nostril, px, 1.2), _shade(skin, 0.32))
    tip = _ellipse_distance(u, v + 0.5, 3.2, 2.6)
    canvas.paint(window, nose.highlight * _soft(tip, px, 3.0), _shade(skin, 1.15))


def _draw_mouth(canvas: _Canvas, params: FaceParams) -> None:
    g, mouth, skin = params.geometry, params.mouth, params.skin
    px = canvas.pixel
    half = g.mouth_half_width
    found = canvas.window(g.mouth_offset_x, g.mouth_drop, g.mouth_depth, half + 8.0)
    if found is None:
        return
    window, u, w = found
    # w: vertical offset from the lip line, which passes through both corners (w = 0 there)
    # and sags by ``smile`` in the middle.
    w = w - mouth.smile * (1.0 - np.clip((u / half) ** 2, 0.0, 1.0))
    # Shadow under the lower lip.
    chin = _ellipse_distance(u, w - mouth.lower_lip - 2.0, 0.45 * half, 1.6)
    canvas.paint(window, 0.25 * _soft(chin, px, 2.5), _shade(skin, 0.7))
    thickness = np.where(w < 0.0, mouth.upper_lip, mouth.lower_lip).astype(np.float32)
    lips = _soft(_superellipse_distance(u, w, half + 2.0, thickness, 4.0), px)
    lip_colour = np.where(
        (w < 0.0)[..., None], _shade(mouth.lip_colour, 0.88), _shade(mouth.lip_colour, 1.0)
    )
    canvas.paint(window, lips, lip_colour)
    shine = _ellipse_distance(u, w - 0.5 * mouth.lower_lip, 0.3 * half, 0.7)
    canvas.paint(window, 0.25 * _soft(shine, px, 2.0), _shade(mouth.lip_colour, 1.4))
    # The line between the lips stops ~1.5 units short of the corners.
    gap = _ellipse_distance(u, w, half - 1.5, mouth.opening)
    canvas.paint(window, _soft(gap, px), _shade(mouth.lip_colour, 0.3))
    if mouth.opening > 1.0:
        teeth = _ellipse_distance(u, w + 0.35 * mouth.opening, half - 4.0, 0.55 * mouth.opening)
        canvas.paint(window, _soft(teeth, px) * _soft(gap, px), mouth.teeth_colour)


def _draw_hair(canvas: _Canvas, params: FaceParams) -> None:
    face, hair = params.face, params.hair
    sw, sh = canvas.silhouette
    extra = hair.volume
    head_y = face.centre_y - 0.4 * extra
    half_w, half_h = face.half_width * sw + extra, face.half_height * sh + extra
    found = canvas.window(0.0, head_y, face.depth, half_w + 2.0, half_h + 2.0)
    if found is None:
        return
    window, u, v = found
    head = _ellipse_distance(u, v, half_w, half_h)
    # Where the hair ends is measured in the eyes' plane (depth 0), so that no head pose
    # can bring the hairline or the side locks over the eyes.
    u0, height = canvas.to_eye_depth(u, v + head_y, face.depth)
    hairline = (
        hair.hairline
        + hair.temple_drop * np.clip(u0 / face.half_width, -1.2, 1.2) ** 2
        + hair.wave_amplitude * np.sin(hair.wave_frequency * u0 + hair.wave_phase)
    )
    cover = _soft(hairline - height, canvas.pixel, 1.5)
    if hair.style == "long":  # side locks framing the face, outside the eye region
        inner_edge = face.half_width - 8.0 + 0.12 * np.clip(height, 0.0, None)
        cover = np.maximum(cover, _soft(np.abs(u0) - inner_edge, canvas.pixel, 1.5))
    alpha = _soft(head, canvas.pixel, 1.5) * cover
    if hair.style == "buzz":
        alpha = alpha * 0.55
    canvas.paint(window, alpha, _hair_texture(hair, u, v + head_y - face.centre_y))


def _draw_glasses(canvas: _Canvas, params: FaceParams) -> None:
    glasses, g, face = params.glasses, params.geometry, params.face
    if glasses is None:
        return
    px, z = canvas.pixel, 4.0
    ga, gb, y = glasses.half_width, glasses.half_height, glasses.offset_y
    for side in (-1.0, 1.0):
        found = canvas.window(side * g.eye_half_spacing, y, z, ga + 3.0)
        if found is None:
            continue
        window, u, v = found
        d = _superellipse_distance(u, v, ga, gb, glasses.exponent, glasses.exponent)
        lens = _soft(d, px)
        region = canvas.image[window]
        canvas.paint(window, lens, region * np.asarray(glasses.tint, dtype=np.float32))
        # A faint reflection streak in the upper outer part of the lens (away from the pupil).
        streak = _segment_distance(
            u, v, (side * 0.25 * ga, -0.8 * gb), (side * 0.75 * ga, -0.2 * gb)
        )
        canvas.paint(window, 0.18 * lens * _soft(1.2 - streak, px, 2.0), (1.0, 1.0, 1.0))
        canvas.paint(window, _soft(glasses.thickness / 2.0 - np.abs(d), px), glasses.frame_colour)
    inner = g.eye_half_spacing - ga + 0.5
    found = canvas.window(0.0, y - 2.0, z, inner + 3.0)
    if found is not None:
        window, u, v = found
        bridge = _segment_distance(u, v - 0.6 * (u / inner) ** 2, (-inner, 0.0), (inner, 0.0))
        canvas.paint(window, _soft(glasses.thickness / 2.0 - bridge, px), glasses.frame_colour)
    outer = g.eye_half_spacing + ga - 0.5
    for side in (-1.0, 1.0):
        length = face.half_width + 1.0 - outer
        if length <= 0:
            continue
        found = canvas.window(side * (outer + length / 2.0), y - 3.0, z - 10.0, length / 2 + 3)
        if found is None:
            continue
        window, u, v = found
        temple = _segment_distance(u, v, (-length / 2.0, 0.0), (length / 2.0, 0.5))
        canvas.paint(window, _soft(glasses.thickness / 2.0 - temple, px), glasses.frame_colour)


def _draw_occluder(canvas: _Canvas, params: FaceParams, landmarks: dict[str, np.ndarray]) -> None:
    occ, face, hair = params.occluder, params.face, params.hair
    if occ is None:
        return
    px = canvas.pixel
    chin = face.centre_y + face.half_height
    if occ.kind == "hand":
        cx, cy, z = occ.side * occ.x, chin + occ.y - 4.0, 8.0
        reach = occ.width + occ.height + 16.0
    elif occ.kind == "hat":
        cx, cy, z = 0.0, face.centre_y - face.half_height - hair.volume, face.depth + 5.0
        reach = face.half_width + hair.volume + 30.0
    else:  # scarf
        cx, cy, z = 0.0, chin + occ.y * 0.8 + 4.0, face.depth + 10.0
        reach = face.half_width + 30.0
    found = canvas.window(cx, cy, z, reach)
    if found is None:
        return
    window, u, v = found
    colour = _shade(occ.colour, 1.0)
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    if occ.kind == "hand":
        hu, hv = _rotate(u, v, occ.side * occ.angle)
        palm = _ellipse_distance(hu, hv, occ.width, occ.width * 1.2)
        layers.append((_soft(palm, px), colour))
        for k in range(4):  # fingers pointing up, from the palm's top edge
            fu = hu - occ.side * (k - 1.5) * 0.5 * occ.width
            fv = hv + occ.width * 1.1 + 0.5 * occ.height * (1.0 - 0.15 * abs(k - 1.5))
            finger = _ellipse_distance(fu, fv, 0.23 * occ.width, 0.5 * occ.height + 4.0)
            layers.append((_soft(finger + 0.6, px), _shade(occ.colour, 0.75)))
            layers.append((_soft(finger, px), colour))
    elif occ.kind == "hat":
        brim_y = min(hair.hairline, -20.0) - 3.0 - cy
        crown_top = -12.0  # the crown rises above the head and ends at the brim
        crown = _superellipse_distance(
            u,
            v - (brim_y + crown_top) / 2.0,
            face.half_width + 4.0 + 0.3 * hair.volume,
            (brim_y - crown_top) / 2.0,
            3.0,
            2.0,
        )
        layers.append((_soft(crown, px), colour))
        band = _soft(crown, px) * _soft(2.5 - np.abs(v - brim_y + 4.0), px)
        layers.append((band, _shade(occ.colour, 0.55)))
        brim = _ellipse_distance(u, v - brim_y, face.half_width + hair.volume + occ.height, 3.5)
        layers.append((_soft(brim, px), _shade(occ.colour, 0.85)))
    else:
        scarf = _superellipse_distance(u, v, face.half_width + occ.height, 13.0, 3.0)
        stripes = 1.0 + 0.25 * np.sign(np.sin(0.5 * (u + v * occ.angle)))
        layers.append((_soft(scarf, px), colour * stripes[..., None].astype(np.float32)))
    # Keep-out: no occluder pixel within _KEEP_OUT (178-wide units) of any landmark.
    ys = canvas.ys[window[0]][:, None]
    xs = canvas.xs[window[1]][None, :]
    keep = np.ones(u.shape, dtype=np.float32)
    radius = _KEEP_OUT / px
    for point in landmarks.values():
        distance = np.hypot(xs - np.float32(point[0]), ys - np.float32(point[1]))
        keep *= np.clip(distance - radius, 0.0, 1.0)
    for alpha, layer_colour in layers:
        canvas.paint(window, alpha * keep, layer_colour)


def _apply_scene(canvas: _Canvas, params: FaceParams) -> None:
    """Lighting gradient, colour cast and pixel noise."""
    scene = params.scene
    centre = canvas.projection(0.0, params.face.centre_y, 0.0)
    c, s = math.cos(scene.light_angle), math.sin(scene.light_angle)
    half = 0.5 * canvas.width
    light_x = (c * scene.light_strength / half) * (canvas.xs - np.float32(centre[0]))
    light_y = (s * scene.light_strength / half) * (canvas.ys - np.float32(centre[1]))
    light = np.clip(1.0 + light_x[None, :] + light_y[:, None], 0.6, 1.3)
    cast = np.asarray(scene.colour_cast, dtype=np.float32) * np.float32(scene.ambient)
    canvas.image *= light[..., None] * cast
    # Zero-mean triangular noise (the sum of two uniforms) with standard deviation noise_std:
    # close enough to Gaussian and several times cheaper to draw.
    uniform = np.random.default_rng(scene.noise_seed).random((2, *canvas.image.shape), np.float32)
    canvas.image += (uniform[0] + uniform[1] - np.float32(1.0)) * np.float32(
        math.sqrt(6.0) * scene.noise_std
    )


def render_face(params: FaceParams) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw one face.

    Returns ``(image, landmarks)``: ``image`` is a uint8 array ``[H, W, 3]`` (RGB) with
    ``(H, W) = params.image_size``; ``landmarks`` maps each name in ``LANDMARKS`` to a
    float64 array ``[2]`` = (x, y) in pixels (see the module docstring's convention).
    The result depends on ``params`` only.
    """
    landmarks = face_landmarks(params)
    canvas = _Canvas(params)
    _draw_background(canvas, params.scene)
    _draw_back_hair(canvas, params)
    _draw_body(canvas, params)
    _draw_face(canvas, params)
    _draw_nose(canvas, params)
    _draw_eyes(canvas, params)
    _draw_brows(canvas, params)
    _draw_mouth(canvas, params)
    _draw_hair(canvas, params)
    _draw_glasses(canvas, params)
    _draw_occluder(canvas, params, landmarks)
    _apply_scene(canvas, params)
    image = np.clip(canvas.image * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    return image, landmarks


# --------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------

#: Faces a worker process draws per task (about 0.3 s at ~17 ms a face).
TASK_FACES = 16
#: Faces per chunk of :meth:`SyntheticFaces.render_chunks` (30 MB at 218 x 178).
CHUNK_FACES = 256
_POLL_S = 0.1  # how often a stop is checked while waiting for the workers
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _worker_init(parent: int) -> None:
    """Run first in each forked worker: die with the parent, default signal handling."""
    # The parent may have a graceful-stop handler (the CLI's SIGTERM): a worker must not
    # keep it, or it would ignore SIGTERM and outlive a stopped training.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the parent's clean-up still kills us
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _start_pool(workers: int) -> ProcessPoolExecutor | None:
    """A pool of ``workers`` forked processes, or ``None`` where fork is unavailable."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    try:
        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )
        with _stop_signals_held():
            pool.submit(int)  # forks every worker now (the fork start method forks them all)
        return pool
    except OSError as error:
        logger.warning("drawing faces in this process (no worker processes: %s)", error)
        return None


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold back SIGTERM and SIGINT's Python handlers while workers are forked, and run them
    right after. A handler that runs inside fork's hooks (Python runs them in the forking
    thread) has its exception ignored ("Exception ignored in: _releaseLock"): the
    KeyboardInterrupt of Ctrl-C, or of the CLI's graceful stop on SIGTERM, would be lost and
    the process would go on drawing. Only the main thread runs Python handlers, so only a
    fork there needs this."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, object] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if callable(handler):  # SIG_DFL and SIG_IGN are not Python code: nothing to lose
            previous[signum] = handler
            signal.signal(signum, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        for signum in caught:
            signal.raise_signal(signum)


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """End a pool now: kill its workers (no waiting for their tasks) and reap them."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        try:
            process.kill()
        except (OSError, ValueError, AttributeError):  # already gone or closed
            pass
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        try:
            process.join(timeout=2.0)
        except (OSError, ValueError, AssertionError):
            pass


def _blocks(chunk: list[int]) -> list[list[int]]:
    """A chunk's indices split into worker tasks of at most ``TASK_FACES``."""
    return [chunk[k : k + TASK_FACES] for k in range(0, len(chunk), TASK_FACES)]


def _result(future: Future, stop_event: threading.Event | None) -> object:
    """A task's result, checking ``stop_event`` every ``_POLL_S`` while it is drawn."""
    while True:
        check_stop(stop_event, "drawing faces")
        try:
            return future.result(timeout=_POLL_S)
        except TimeoutError:
            continue


def _concatenate(
    parts: list[tuple[np.ndarray, dict[str, np.ndarray]]],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if len(parts) == 1:
        return parts[0]
    images = np.concatenate([images for images, _ in parts])
    landmarks = {name: np.concatenate([marks[name] for _, marks in parts]) for name in LANDMARKS}
    return images, landmarks


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


class SyntheticFaces(Dataset):
    """``n`` procedurally drawn faces with the five CelebA landmarks (offline, exact, fast).

    Item ``i`` is a dict: ``"image"``: float32 tensor ``[3, H, W]`` in [0, 1]; and, for each
    name in ``LANDMARKS``, a float32 tensor ``[2]`` = (x, y) in pixels, x to the right and y
    downward, pixel column ``j`` covering x in ``[j, j + 1)`` (so the centre of pixel (i, j)
    is (j + 0.5, i + 0.5)). It depends only on ``(seed, i)``.

    Args:
        n: number of items (>= 0).
        seed: non-negative integer; different seeds give different faces.
        image_size: ``(height, width)``, each in [32, 4096]; the default is aligned CelebA's.
            The face geometry scales with the width and height.
    """

    def __init__(self, n: int, seed: int = 0, image_size: tuple[int, int] = (218, 178)) -> None:
        n = _check_int("n", n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        seed = _check_int("seed", seed)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        try:
            height, width = image_size
        except (TypeError, ValueError):
            raise ValueError(
                f"image_size must be a (height, width) pair, got {image_size!r}"
            ) from None
        height, width = _check_int("image height", height), _check_int("image width", width)
        if not (_MIN_SIZE <= height <= _MAX_SIZE and _MIN_SIZE <= width <= _MAX_SIZE):
            raise ValueError(
                f"image_size (height, width) must lie in [{_MIN_SIZE}, {_MAX_SIZE}] each, "
                f"got {image_size!r}"
            )
        self.n, self.seed, self.image_size = n, seed, (height, width)

    def __len__(self) -> int:
        return self.n

    def _index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"index must be an integer, got {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index out of range for {self.n} items")
        return index

    def _indices(self, indices: Sequence[int]) -> list[int]:
        """``[self._index(i) for i in indices]``, at once for a range within bounds."""
        if isinstance(indices, range) and (
            len(indices) == 0 or (0 <= indices[0] < self.n and 0 <= indices[-1] < self.n)
        ):
            return list(indices)
        return [self._index(i) for i in indices]

    def params(self, index: int) -> FaceParams:
        """The parameters of item ``index`` (negative indices count from the end)."""
        rng = np.random.default_rng([self.seed, self._index(index)])
        return sample_face_params(rng, self.image_size)

    def render(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Item ``index`` as ``render_face`` returns it: uint8 ``[H, W, 3]`` and landmarks."""
        return render_face(self.params(index))

    def render_block(self, indices: Sequence[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Items ``indices`` drawn here, one after another: uint8 ``[N, H, W, 3]`` and
        ``{name: [N, 2]}`` (what a worker process of :meth:`render_chunks` does)."""
        height, width = self.image_size
        images = np.empty((len(indices), height, width, 3), dtype=np.uint8)
        landmarks = {name: np.empty((len(indices), 2), dtype=np.float64) for name in LANDMARKS}
        for k, index in enumerate(indices):
            images[k], marks = self.render(index)
            for name in LANDMARKS:
                landmarks[name][k] = marks[name]
        return images, landmarks

    def render_chunks(
        self,
        indices: Sequence[int],
        *,
        chunk_size: int = CHUNK_FACES,
        workers: int | None = None,
        stop_event: threading.Event | None = None,
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Items ``indices`` in order, ``chunk_size`` at a time: for each chunk, uint8 images
        ``[n, H, W, 3]`` and ``{name: [n, 2]}`` (``n = chunk_size``, less in the last one).

        Memory stays bounded whatever ``len(indices)``: at most two chunks are being drawn
        or held at a time. With ``workers`` > 1 (default: one per CPU core for 256 items or
        more) the faces are drawn in forked worker processes, ``TASK_FACES`` per task (drawing
        is numpy code that holds the GIL, so threads would not help); the workers die with
        this process (SIGKILL from the kernel on Linux, whatever kills it), take SIGTERM and
        SIGINT with the default action, and are killed at once when anything goes wrong
        here, including a stop, a ``KeyboardInterrupt`` or the caller closing the iterator.
        Falls back to drawing here when processes cannot be forked or die. The result is the
        same either way: item ``i`` depends on ``(seed, i)`` only.

        Raises:
            PreparationStopped: ``stop_event`` was set (checked several times a second).
        """
        chunk_size = _check_int("chunk_size", chunk_size)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        order = self._indices(indices)
        chunks = [order[k : k + chunk_size] for k in range(0, len(order), chunk_size)]
        if workers is None:
            workers = (os.cpu_count() or 1) if len(order) >= 256 else 1
        workers = max(1, min(int(workers), math.ceil(len(order) / TASK_FACES)))
        pool = _start_pool(workers) if workers > 1 else None
        submitted: dict[int, list[Future]] = {}

        def submit(c: int) -> None:  # chunk c's tasks, unless handed out already
            if pool is not None and c < len(chunks) and c not in submitted:
                submitted[c] = [pool.submit(self.render_block, b) for b in _blocks(chunks[c])]

        try:
            for c, chunk in enumerate(chunks):
                drawn = None
                if pool is not None:
                    try:
                        submit(c)
                        submit(c + 1)  # drawn while this process takes chunk c on
                        drawn = _concatenate([_result(f, stop_event) for f in submitted.pop(c)])
                    except (OSError, BrokenProcessPool) as error:
                        logger.warning("drawing faces in this process (workers failed: %s)", error)
                        _kill_pool(pool)
                        pool = None
                if drawn is None:
                    parts = []
                    for block in _blocks(chunk):
                        check_stop(stop_event, "drawing faces")
                        parts.append(self.render_block(block))
                    drawn = _concatenate(parts)
                yield drawn
        except BaseException:  # a stop, Ctrl-C, an error or the caller closing the iterator
            if pool is not None:
                _kill_pool(pool)
                pool = None
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def render_many(
        self,
        indices: Sequence[int],
        workers: int | None = None,
        stop_event: threading.Event | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Items ``indices`` at once: uint8 images ``[N, H, W, 3]`` and ``{name: [N, 2]}``.

        Drawn with :meth:`render_chunks` (worker processes for 256 items or more, see there)
        straight into the result: memory is the result plus two chunks. For many items at
        a smaller size, resize :meth:`render_chunks`' chunks instead (a 218 x 178 face is
        116 KB).

        Raises:
            PreparationStopped: ``stop_event`` was set.
        """
        order = self._indices(indices)
        height, width = self.image_size
        images = np.empty((len(order), height, width, 3), dtype=np.uint8)
        landmarks = {name: np.empty((len(order), 2), dtype=np.float64) for name in LANDMARKS}
        done = 0
        for chunk, marks in self.render_chunks(order, workers=workers, stop_event=stop_event):
            images[done : done + len(chunk)] = chunk
            for name in LANDMARKS:
                landmarks[name][done : done + len(chunk)] = marks[name]
            done += len(chunk)
        return images, landmarks

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, landmarks = self.render(index)
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        item = {"image": torch.from_numpy(chw).float().div_(255.0)}
        for name in LANDMARKS:
            item[name] = torch.tensor(landmarks[name], dtype=torch.float32)
        return item

    def __repr__(self) -> str:
        return f"SyntheticFaces(n={self.n}, seed={self.seed}, image_size={self.image_size})"
