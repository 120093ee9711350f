"""The parameters that determine one drawn face, and the palettes they are drawn from.

Lengths are in the face frame: pixels of a 178 x 218 image, origin at the midpoint between
the eyes, ``X`` right, ``Y`` down, ``Z`` towards the camera (see the package docstring).
Colours are RGB triples in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "HAIR_COLOURS",
    "HAIR_STYLES",
    "IRIS_COLOURS",
    "LIPSTICKS",
    "SKIN_TONES",
    "Colour",
    "Eyes",
    "FaceParams",
    "FaceShape",
    "Geometry",
    "Glasses",
    "Hair",
    "Mouth",
    "Nose",
    "Occluder",
    "Pose",
    "Scene",
]

Colour = tuple[float, float, float]

# [6, 3], light to dark; a face's tone lies between two neighbours.
SKIN_TONES = np.array(
    [
        (0.98, 0.85, 0.76),
        (0.93, 0.76, 0.64),
        (0.84, 0.63, 0.48),
        (0.70, 0.48, 0.34),
        (0.52, 0.34, 0.23),
        (0.37, 0.23, 0.16),
    ]
)
HAIR_COLOURS = (  # (colour, weight)
    ((0.06, 0.05, 0.05), 0.24),
    ((0.17, 0.11, 0.07), 0.22),
    ((0.35, 0.22, 0.12), 0.17),
    ((0.55, 0.40, 0.24), 0.10),
    ((0.84, 0.70, 0.44), 0.10),
    ((0.60, 0.25, 0.10), 0.05),
    ((0.58, 0.57, 0.55), 0.05),
    ((0.86, 0.85, 0.82), 0.03),
)
IRIS_COLOURS = (  # browns, hazel, green, blue, grey
    (0.33, 0.19, 0.09),
    (0.20, 0.12, 0.07),
    (0.45, 0.37, 0.17),
    (0.30, 0.45, 0.25),
    (0.30, 0.45, 0.66),
    (0.45, 0.50, 0.55),
)
LIPSTICKS = ((0.75, 0.08, 0.12), (0.85, 0.35, 0.50), (0.45, 0.08, 0.20), (0.90, 0.35, 0.30))
HAIR_STYLES = ("short", "fringe", "long", "buzz", "curly")


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
