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
A default-size item takes about 10 ms to draw on one CPU core; for many items,
``SyntheticFaces.render_chunks`` draws them in forked worker processes.

Modules
-------
``params`` (what determines a face), ``sampling`` (drawing those parameters from a seed),
``projection`` (face frame -> image, and the exact landmarks), ``raster`` (the canvas and its
shapes), ``drawing`` (the features and ``render_face``), ``workers`` (the worker processes)
and ``dataset`` (``SyntheticFaces``).
"""

from mist_core.data.landmarks import LANDMARKS
from mist_core.data.synthetic_faces.dataset import SyntheticFaces
from mist_core.data.synthetic_faces.drawing import render_face
from mist_core.data.synthetic_faces.params import (
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
from mist_core.data.synthetic_faces.projection import face_landmarks
from mist_core.data.synthetic_faces.sampling import sample_face_params
from mist_core.data.synthetic_faces.workers import CHUNK_FACES, TASK_FACES

__all__ = [
    "CHUNK_FACES",
    "LANDMARKS",
    "TASK_FACES",
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
    "SyntheticFaces",
    "face_landmarks",
    "render_face",
    "sample_face_params",
]
