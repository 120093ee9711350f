"""The features of a drawn face, painted back to front, and ``render_face``.

Each ``_draw_*`` paints one feature on the canvas over what is below it; ``render_face``
calls them in depth order (background, long hair, body, face, nose, eyes, brows, mouth,
hair, glasses, occluder) and then applies the scene's lighting and noise.
"""

from __future__ import annotations

import math

import numpy as np

from mist_core.data.landmarks import CELEBA_HEIGHT, CELEBA_WIDTH
from mist_core.data.synthetic_faces.params import FaceParams, Hair, Scene
from mist_core.data.synthetic_faces.projection import face_landmarks
from mist_core.data.synthetic_faces.raster import (
    Canvas,
    ellipse_distance,
    rotate,
    segment_distance,
    shade,
    soft,
    superellipse_distance,
)

__all__ = ["render_face"]

_KEEP_OUT = 7.0  # occluders are masked out within this radius (178-wide units) of landmarks


def _draw_background(canvas: Canvas, scene: Scene) -> None:
    sx, sy = canvas.width / CELEBA_WIDTH, canvas.height / CELEBA_HEIGHT
    xs, ys = canvas.xs[None, :] / sx, canvas.ys[:, None] / sy  # in 178 x 218 units
    c, s = math.cos(scene.background_angle), math.sin(scene.background_angle)
    t = (c * (xs - CELEBA_WIDTH / 2) + s * (ys - CELEBA_HEIGHT / 2)) / 140.0 + 0.5
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


def _draw_body(canvas: Canvas, params: FaceParams) -> None:
    face, scene, skin = params.face, params.scene, params.skin
    chin = face.centre_y + face.half_height
    neck_half = face.half_width * 0.52
    found = canvas.window(0.0, chin + 20.0, face.depth - 10.0, neck_half + 2.0, 47.0)
    if found is not None:
        window, u, v = found
        d = superellipse_distance(u, v, neck_half, 45.0, 4.0)
        neck_light = np.float32(0.8) + np.float32(0.1) * np.clip(v / 40.0, 0.0, 1.0)[..., None]
        canvas.paint(window, soft(d, canvas.pixel, 1.5), shade(skin, 0.78) * neck_light)
    top = chin + 26.0
    found = canvas.window(0.0, top + 45.0, face.depth - 20.0, scene.shoulder_width + 2.0, 50.0)
    if found is not None:
        window, u, v = found
        d = superellipse_distance(u, v, scene.shoulder_width, 48.0, 3.0)
        alpha = soft(d, canvas.pixel, 1.5)
        neckline = soft(ellipse_distance(u, v + 45.0, neck_half + 1.5, 14.0), canvas.pixel)
        alpha *= 1.0 - neckline
        fold = 1.0 - 0.15 * np.clip(np.abs(u) / scene.shoulder_width, 0.0, 1.0) ** 2
        canvas.paint(window, alpha, shade(scene.clothes_colour, 1.0) * fold[..., None])


def _hair_texture(hair: Hair, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Hair colour field [h, w, 3]: strands as a soft angular stripe pattern."""
    angle = np.arctan2(u, -v - 20.0)
    f = hair.strand_frequency
    strands = 1.0 + 0.07 * np.sin(f * angle) + 0.05 * np.sin(2.7 * f * angle + 1.3)
    if hair.style == "curly":
        strands = strands * (1.0 + 0.1 * np.sin(0.9 * u) * np.sin(0.9 * v))
    return shade(hair.colour, 1.0) * strands[..., None].astype(np.float32)


def _draw_back_hair(canvas: Canvas, params: FaceParams) -> None:
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
    d = superellipse_distance(u, v, half_w, half_h, 3.0, 3.0)
    colour = _hair_texture(hair, u, v + centre - face.centre_y) * np.float32(0.85)
    canvas.paint(window, soft(d, canvas.pixel, 1.5), colour)


def _draw_face(canvas: Canvas, params: FaceParams) -> None:
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
            soft(ellipse_distance(u, v, 6.0 * size, 11.0 * size), canvas.pixel),
            shade(skin, 0.9),
        )
        inner = ellipse_distance(u - side * 1.5, v, 3.0 * size, 7.0 * size)
        canvas.paint(window, 0.5 * soft(inner, canvas.pixel, 2.0), shade(skin, 0.7))
    found = canvas.window(0.0, face.centre_y, face.depth, half_w + 2.0, half_h + 2.0)
    if found is None:
        return
    window, u, v = found
    narrowing = 1.0 - face.chin_taper * np.clip(v / half_h, 0.0, 1.0) ** 2
    d = ellipse_distance(u / narrowing, v, half_w, half_h) * narrowing
    rho2 = (u / (half_w * narrowing)) ** 2 + (v / half_h) ** 2
    shading = (1.0 - 0.2 * np.clip(rho2, 0.0, 1.0) ** 2)[..., None]
    canvas.paint(window, soft(d, canvas.pixel), shade(skin, 1.0) * shading)


def _draw_eyes(canvas: Canvas, params: FaceParams) -> None:
    g, eyes, skin = params.geometry, params.eyes, params.skin
    px = canvas.pixel
    for side in (-1.0, 1.0):
        found = canvas.window(side * g.eye_half_spacing, 0.0, 0.0, eyes.half_width + 6.0)
        if found is None:
            continue
        window, u, v = found  # relative to the iris centre, i.e. the landmark
        # Eye socket shadow.
        socket = ellipse_distance(u, v + 1.0, eyes.half_width + 3.5, eyes.half_height + 3.5)
        canvas.paint(window, 0.18 * soft(socket, px, 4.0), shade(skin, 0.7))
        # The white: centred at (iris - gaze), tilted upwards at the outer corner.
        su, sv = rotate(u + eyes.gaze_x * side, v + eyes.gaze_y, -side * eyes.tilt)
        white = soft(ellipse_distance(su, sv, eyes.half_width, eyes.half_height), px)
        canvas.paint(window, white, eyes.sclera_colour)
        # Iris with a darker rim, then the pupil; both only inside the white.
        radius = np.hypot(u, v)
        canvas.paint(
            window, white * soft(eyes.iris_radius - radius, px), shade(eyes.iris_colour, 0.6)
        )
        canvas.paint(window, white * soft(eyes.iris_radius - 0.7 - radius, px), eyes.iris_colour)
        canvas.paint(window, white * soft(eyes.pupil_radius - radius, px), (0.03, 0.03, 0.035))
        if eyes.catchlight:
            glint = np.hypot(u + 1.1, v + 1.1)
            canvas.paint(window, 0.8 * white * soft(0.6 - glint, px), (0.95, 0.95, 0.95))
        # Upper lid line (fades towards the corners) and a faint lower lid.
        lid = np.abs(ellipse_distance(su, sv, eyes.half_width + 0.3, eyes.half_height + 0.3))
        upper = np.clip((0.4 * eyes.half_height - sv) / (0.6 * eyes.half_height), 0.0, 1.0)
        canvas.paint(window, upper * soft(eyes.lid_thickness - lid, px), eyes.lash_colour)
        lower = np.clip(sv / eyes.half_height, 0.0, 1.0)
        canvas.paint(window, 0.35 * lower * soft(0.5 - lid, px), shade(skin, 0.6))


def _draw_brows(canvas: Canvas, params: FaceParams) -> None:
    g, eyes = params.geometry, params.eyes
    length = eyes.brow_half_length
    for side in (-1.0, 1.0):
        cx = side * (g.eye_half_spacing + eyes.brow_offset)
        found = canvas.window(cx, -eyes.brow_height, 0.0, length + 4.0)
        if found is None:
            continue
        window, u, v = found
        u, v = rotate(u, v, side * eyes.brow_tilt)
        v = v + eyes.brow_arch * (1.0 - (u / length) ** 2)  # arched: the middle is higher
        # Thicker at the inner end (towards the nose).
        thickness = eyes.brow_thickness * (1.0 - 0.35 * np.clip(side * u / length, -1.0, 1.0))
        d = ellipse_distance(u, v, length, thickness)
        canvas.paint(window, 0.9 * soft(d, canvas.pixel, 1.3), eyes.brow_colour)


def _draw_nose(canvas: Canvas, params: FaceParams) -> None:
    g, nose, skin = params.geometry, params.nose, params.skin
    px = canvas.pixel
    tip_y, tip_z = g.nose_drop, g.nose_depth
    # Bridge shadow on the side away from the light.
    side = -1.0 if math.cos(params.scene.light_angle) > 0 else 1.0
    found = canvas.window(0.0, tip_y / 2.0, tip_z / 2.0, tip_y / 2.0 + 6.0)
    if found is not None:
        window, u, v = found
        d = segment_distance(
            u, v, (side * 3.5, 3.0 - tip_y / 2.0), (side * 5.0, tip_y / 2.0 - 4.0)
        )
        canvas.paint(window, 0.35 * nose.shadow * soft(1.6 - d, px, 2.5), shade(skin, 0.7))
    found = canvas.window(0.0, tip_y, tip_z, nose.half_width + 5.0)
    if found is None:
        return
    window, u, v = found  # relative to the nose tip, i.e. the landmark
    # Wings of the nose and the shadow under it.
    for wing in (-1.0, 1.0):
        ring = np.abs(ellipse_distance(u - wing * (nose.half_width - 2.5), v - 0.5, 3.0, 3.2))
        outer = np.clip(wing * u / 2.0, 0.0, 1.0)
        canvas.paint(
            window, 0.45 * nose.shadow * outer * soft(0.7 - ring, px, 1.5), shade(skin, 0.65)
        )
    under = ellipse_distance(u, v - 3.2, nose.half_width - 0.5, 2.0)
    canvas.paint(window, nose.shadow * soft(under, px, 2.0), shade(skin, 0.72))
    size = nose.nostril_size
    for wing in (-1.0, 1.0):
        nu, nv = rotate(u - wing * 0.45 * nose.half_width, v - 2.7, wing * 0.35)
        nostril = ellipse_distance(nu, nv, 1.9 * size, 1.0 * size)
        canvas.paint(window, 0.9 * soft(nostril, px, 1.2), shade(skin, 0.32))
    tip = ellipse_distance(u, v + 0.5, 3.2, 2.6)
    canvas.paint(window, nose.highlight * soft(tip, px, 3.0), shade(skin, 1.15))


def _draw_mouth(canvas: Canvas, params: FaceParams) -> None:
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
    chin = ellipse_distance(u, w - mouth.lower_lip - 2.0, 0.45 * half, 1.6)
    canvas.paint(window, 0.25 * soft(chin, px, 2.5), shade(skin, 0.7))
    thickness = np.where(w < 0.0, mouth.upper_lip, mouth.lower_lip).astype(np.float32)
    lips = soft(superellipse_distance(u, w, half + 2.0, thickness, 4.0), px)
    lip_colour = np.where(
        (w < 0.0)[..., None], shade(mouth.lip_colour, 0.88), shade(mouth.lip_colour, 1.0)
    )
    canvas.paint(window, lips, lip_colour)
    shine = ellipse_distance(u, w - 0.5 * mouth.lower_lip, 0.3 * half, 0.7)
    canvas.paint(window, 0.25 * soft(shine, px, 2.0), shade(mouth.lip_colour, 1.4))
    # The line between the lips stops ~1.5 units short of the corners.
    gap = ellipse_distance(u, w, half - 1.5, mouth.opening)
    canvas.paint(window, soft(gap, px), shade(mouth.lip_colour, 0.3))
    if mouth.opening > 1.0:
        teeth = ellipse_distance(u, w + 0.35 * mouth.opening, half - 4.0, 0.55 * mouth.opening)
        canvas.paint(window, soft(teeth, px) * soft(gap, px), mouth.teeth_colour)


def _draw_hair(canvas: Canvas, params: FaceParams) -> None:
    face, hair = params.face, params.hair
    sw, sh = canvas.silhouette
    extra = hair.volume
    head_y = face.centre_y - 0.4 * extra
    half_w, half_h = face.half_width * sw + extra, face.half_height * sh + extra
    found = canvas.window(0.0, head_y, face.depth, half_w + 2.0, half_h + 2.0)
    if found is None:
        return
    window, u, v = found
    head = ellipse_distance(u, v, half_w, half_h)
    # Where the hair ends is measured in the eyes' plane (depth 0), so that no head pose
    # can bring the hairline or the side locks over the eyes.
    u0, height = canvas.to_eye_depth(u, v + head_y, face.depth)
    hairline = (
        hair.hairline
        + hair.temple_drop * np.clip(u0 / face.half_width, -1.2, 1.2) ** 2
        + hair.wave_amplitude * np.sin(hair.wave_frequency * u0 + hair.wave_phase)
    )
    cover = soft(hairline - height, canvas.pixel, 1.5)
    if hair.style == "long":  # side locks framing the face, outside the eye region
        inner_edge = face.half_width - 8.0 + 0.12 * np.clip(height, 0.0, None)
        cover = np.maximum(cover, soft(np.abs(u0) - inner_edge, canvas.pixel, 1.5))
    alpha = soft(head, canvas.pixel, 1.5) * cover
    if hair.style == "buzz":
        alpha = alpha * 0.55
    canvas.paint(window, alpha, _hair_texture(hair, u, v + head_y - face.centre_y))


def _draw_glasses(canvas: Canvas, params: FaceParams) -> None:
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
        d = superellipse_distance(u, v, ga, gb, glasses.exponent, glasses.exponent)
        lens = soft(d, px)
        region = canvas.image[window]
        canvas.paint(window, lens, region * np.asarray(glasses.tint, dtype=np.float32))
        # A faint reflection streak in the upper outer part of the lens (away from the pupil).
        streak = segment_distance(
            u, v, (side * 0.25 * ga, -0.8 * gb), (side * 0.75 * ga, -0.2 * gb)
        )
        canvas.paint(window, 0.18 * lens * soft(1.2 - streak, px, 2.0), (1.0, 1.0, 1.0))
        canvas.paint(window, soft(glasses.thickness / 2.0 - np.abs(d), px), glasses.frame_colour)
    inner = g.eye_half_spacing - ga + 0.5
    found = canvas.window(0.0, y - 2.0, z, inner + 3.0)
    if found is not None:
        window, u, v = found
        bridge = segment_distance(u, v - 0.6 * (u / inner) ** 2, (-inner, 0.0), (inner, 0.0))
        canvas.paint(window, soft(glasses.thickness / 2.0 - bridge, px), glasses.frame_colour)
    outer = g.eye_half_spacing + ga - 0.5
    for side in (-1.0, 1.0):
        length = face.half_width + 1.0 - outer
        if length <= 0:
            continue
        found = canvas.window(side * (outer + length / 2.0), y - 3.0, z - 10.0, length / 2 + 3)
        if found is None:
            continue
        window, u, v = found
        temple = segment_distance(u, v, (-length / 2.0, 0.0), (length / 2.0, 0.5))
        canvas.paint(window, soft(glasses.thickness / 2.0 - temple, px), glasses.frame_colour)


def _draw_occluder(canvas: Canvas, params: FaceParams, landmarks: dict[str, np.ndarray]) -> None:
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
    colour = shade(occ.colour, 1.0)
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    if occ.kind == "hand":
        hu, hv = rotate(u, v, occ.side * occ.angle)
        palm = ellipse_distance(hu, hv, occ.width, occ.width * 1.2)
        layers.append((soft(palm, px), colour))
        for k in range(4):  # fingers pointing up, from the palm's top edge
            fu = hu - occ.side * (k - 1.5) * 0.5 * occ.width
            fv = hv + occ.width * 1.1 + 0.5 * occ.height * (1.0 - 0.15 * abs(k - 1.5))
            finger = ellipse_distance(fu, fv, 0.23 * occ.width, 0.5 * occ.height + 4.0)
            layers.append((soft(finger + 0.6, px), shade(occ.colour, 0.75)))
            layers.append((soft(finger, px), colour))
    elif occ.kind == "hat":
        brim_y = min(hair.hairline, -20.0) - 3.0 - cy
        crown_top = -12.0  # the crown rises above the head and ends at the brim
        crown = superellipse_distance(
            u,
            v - (brim_y + crown_top) / 2.0,
            face.half_width + 4.0 + 0.3 * hair.volume,
            (brim_y - crown_top) / 2.0,
            3.0,
            2.0,
        )
        layers.append((soft(crown, px), colour))
        band = soft(crown, px) * soft(2.5 - np.abs(v - brim_y + 4.0), px)
        layers.append((band, shade(occ.colour, 0.55)))
        brim = ellipse_distance(u, v - brim_y, face.half_width + hair.volume + occ.height, 3.5)
        layers.append((soft(brim, px), shade(occ.colour, 0.85)))
    else:
        scarf = superellipse_distance(u, v, face.half_width + occ.height, 13.0, 3.0)
        stripes = 1.0 + 0.25 * np.sign(np.sin(0.5 * (u + v * occ.angle)))
        layers.append((soft(scarf, px), colour * stripes[..., None].astype(np.float32)))
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


def _apply_scene(canvas: Canvas, params: FaceParams) -> None:
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
    float64 array ``[2]`` = (x, y) in pixels, pixel (row i, column j) covering x in
    ``[j, j + 1)`` and y in ``[i, i + 1)``. The result depends on ``params`` only.
    """
    landmarks = face_landmarks(params)
    canvas = Canvas(params)
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
