"""Drawing the parameters of one face from a random generator.

``sample_face_params`` calls one sampler per part, in a fixed order; each sampler draws its
values in a fixed order too. That order *is* the dataset: item ``i`` of a seed is the same
face only as long as every draw happens in the same sequence, so a new draw goes after the
existing ones of its sampler, never between them.
"""

from __future__ import annotations

import math

import numpy as np

from mist_core.data.landmarks import CELEBA_HEIGHT, CELEBA_SIZE, CELEBA_WIDTH
from mist_core.data.synthetic_faces.params import (
    HAIR_COLOURS,
    HAIR_STYLES,
    IRIS_COLOURS,
    LIPSTICKS,
    SKIN_TONES,
    Colour,
    Eyes,
    FaceParams,
    FaceShape,
    Geometry,
    Glasses,
    Hair,
    Mouth,
    Nose,
    Occluder,
    Pose,
    Scene,
)

__all__ = ["sample_face_params"]


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


def _sample_pose(rng: np.random.Generator) -> Pose:
    return Pose(
        scale=_normal(rng, 1.0, 0.04, 0.12),
        yaw=_normal(rng, 0.0, 0.16, 0.4),
        pitch=_normal(rng, 0.0, 0.08, 0.2),
        roll=_normal(rng, 0.0, 0.04, 0.12),
        shift_x=_normal(rng, 0.0, 1.8, 5.0),
        shift_y=_normal(rng, 0.0, 1.8, 5.0),
    )


def _sample_geometry(rng: np.random.Generator) -> Geometry:
    return Geometry(
        eye_half_spacing=_normal(rng, 19.25, 0.6, 2.0),
        nose_drop=_normal(rng, 23.0, 1.5, 4.0),
        nose_depth=_normal(rng, 22.0, 2.0, 5.0),
        mouth_drop=_normal(rng, 41.0, 1.8, 5.0),
        mouth_half_width=_normal(rng, 16.0, 1.3, 4.0),
        mouth_offset_x=_normal(rng, 0.0, 0.4, 1.0),
        mouth_depth=_normal(rng, 6.0, 1.0, 3.0),
    )


def _sample_skin(rng: np.random.Generator) -> Colour:
    """A tone between two neighbouring ``SKIN_TONES``, slightly jittered."""
    tone = _uniform(rng, 0.0, len(SKIN_TONES) - 1.0)
    low = int(math.floor(tone))
    high = min(low + 1, len(SKIN_TONES) - 1)
    base = SKIN_TONES[low] * (1.0 - (tone - low)) + SKIN_TONES[high] * (tone - low)
    return _jitter(rng, tuple(base), 0.025)


def _sample_face_shape(rng: np.random.Generator) -> FaceShape:
    return FaceShape(
        centre_y=_uniform(rng, 8.0, 14.0),
        depth=-25.0,
        half_width=_uniform(rng, 41.0, 48.0),
        half_height=_uniform(rng, 62.0, 70.0),
        chin_taper=_uniform(rng, 0.05, 0.35),
        ear_y=_uniform(rng, 2.0, 9.0),
        ear_size=_uniform(rng, 0.85, 1.15),
    )


def _sample_hair(rng: np.random.Generator, geometry: Geometry, face: FaceShape) -> Hair:
    """Hair whose hairline stays above the eyes (see ``temple_drop``'s bound)."""
    weights = np.array([w for _, w in HAIR_COLOURS])
    choice = int(rng.choice(len(HAIR_COLOURS), p=weights / weights.sum()))
    colour = (
        _random_colour(rng, 0.1, 0.8)
        if rng.random() < 0.04
        else _jitter(rng, HAIR_COLOURS[choice][0], 0.025)
    )
    style = HAIR_STYLES[int(rng.choice(5, p=[0.34, 0.2, 0.28, 0.08, 0.10]))]
    hairline = _uniform(rng, -26.0, -18.0) if style == "fringe" else _uniform(rng, -44.0, -28.0)
    temple_drop = _uniform(rng, 8.0, 36.0)
    # Keep the hair above the eyes: at the eyes' outer corners the hairline stays <= -9.
    reach = (geometry.eye_half_spacing + 12.0) / face.half_width
    temple_drop = min(temple_drop, (-9.0 - hairline) / reach**2)
    return Hair(
        style=style,
        colour=colour,
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


def _sample_eyes(rng: np.random.Generator, hair_colour: Colour) -> Eyes:
    """Eyes and brows; the brows are a darker hair colour, or brown under light hair."""
    brow_base = np.asarray(hair_colour) * 0.7 if sum(hair_colour) < 1.5 else (0.45, 0.35, 0.22)
    half_height = _uniform(rng, 2.9, 4.3)  # drawn before the width: part of the stream order
    return Eyes(
        half_width=_uniform(rng, 6.2, 8.5),
        half_height=half_height,
        tilt=_uniform(rng, -0.12, 0.12),
        iris_radius=_uniform(rng, 3.1, 3.9),
        pupil_radius=_uniform(rng, 1.5, 1.9),
        iris_colour=_jitter(rng, IRIS_COLOURS[int(rng.integers(len(IRIS_COLOURS)))], 0.03),
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


def _sample_nose(rng: np.random.Generator) -> Nose:
    return Nose(
        half_width=_uniform(rng, 5.5, 8.0),
        nostril_size=_uniform(rng, 0.8, 1.2),
        shadow=_uniform(rng, 0.35, 0.7),
        highlight=_uniform(rng, 0.25, 0.6),
    )


def _sample_mouth(rng: np.random.Generator, skin: Colour) -> Mouth:
    """Natural lips (a redder skin tone) or, for 15% of faces, lipstick; 20% open mouths."""
    lip_natural = np.asarray(skin) * (0.85, 0.55, 0.58) + (0.12, 0.0, 0.03)
    lip = (
        _jitter(rng, LIPSTICKS[int(rng.integers(len(LIPSTICKS)))], 0.03)
        if rng.random() < 0.15
        else _jitter(rng, tuple(lip_natural), 0.02)
    )
    return Mouth(
        upper_lip=_uniform(rng, 2.3, 3.8),
        lower_lip=_uniform(rng, 3.0, 5.0),
        smile=_uniform(rng, -1.0, 3.0),
        opening=_uniform(rng, 1.0, 2.6) if rng.random() < 0.2 else _uniform(rng, 0.4, 0.7),
        lip_colour=lip,
        teeth_colour=_jitter(rng, (0.92, 0.9, 0.82), 0.02),
    )


def _sample_glasses(rng: np.random.Generator) -> Glasses | None:
    """Glasses for 15% of faces (60% of them with dark frames), else ``None``."""
    if rng.random() >= 0.15:
        return None
    dark = rng.random() < 0.6
    return Glasses(
        half_width=_uniform(rng, 10.5, 12.5),
        half_height=_uniform(rng, 7.5, 9.5),
        exponent=_uniform(rng, 2.0, 4.0),
        offset_y=_uniform(rng, -0.5, 1.5),
        thickness=_uniform(rng, 0.8, 1.8),
        frame_colour=_random_colour(rng, 0.0, 0.15) if dark else _random_colour(rng),
        tint=_colour(rng.uniform(0.8, 1.0, 3)),
    )


def _sample_occluder(rng: np.random.Generator, skin: Colour) -> Occluder | None:
    """A hand, hat or scarf for 10% of faces, else ``None``; most hands are the face's skin."""
    if rng.random() >= 0.10:
        return None
    kind = ("hand", "hat", "scarf")[int(rng.integers(3))]
    if kind == "hand":
        colour = skin if rng.random() < 0.7 else _jitter(rng, tuple(SKIN_TONES[2]), 0.1)
    else:
        colour = _random_colour(rng)
    return Occluder(
        kind=kind,
        colour=colour,
        side=-1.0 if rng.random() < 0.5 else 1.0,
        x=_uniform(rng, 18.0, 34.0),
        y=_uniform(rng, 0.0, 10.0),
        width=_uniform(rng, 11.0, 15.0),
        height=_uniform(rng, 12.0, 28.0),
        angle=_uniform(rng, -0.5, 0.5),
    )


def _sample_scene(rng: np.random.Generator) -> Scene:
    background_style = ("gradient", "blobs", "stripes")[int(rng.choice(3, p=[0.4, 0.4, 0.2]))]
    n_blobs = int(rng.integers(1, 5)) if background_style == "blobs" else 0
    blobs = tuple(
        (
            _uniform(rng, 0.0, CELEBA_WIDTH),
            _uniform(rng, 0.0, CELEBA_HEIGHT),
            _uniform(rng, 15.0, 55.0),
            _random_colour(rng),
        )
        for _ in range(n_blobs)
    )
    return Scene(
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


def sample_face_params(
    rng: np.random.Generator, image_size: tuple[int, int] = CELEBA_SIZE
) -> FaceParams:
    """Draw every parameter of one face from ``rng`` (and from nothing else).

    ``image_size`` is ``(height, width)`` in pixels; it scales the drawing, not the draws.
    The parts are drawn in the order of the statements below (see the module docstring).
    """
    pose = _sample_pose(rng)
    geometry = _sample_geometry(rng)
    skin = _sample_skin(rng)
    face = _sample_face_shape(rng)
    hair = _sample_hair(rng, geometry, face)
    eyes = _sample_eyes(rng, hair.colour)
    nose = _sample_nose(rng)
    mouth = _sample_mouth(rng, skin)
    glasses = _sample_glasses(rng)
    occluder = _sample_occluder(rng, skin)
    scene = _sample_scene(rng)
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
