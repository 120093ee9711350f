"""A person's photo, in the framing of aligned CelebA: safe decoding, face detection, alignment.

This is the library side of the dashboard's "Your photo" page (it does not import streamlit):

1. ``load_photo(data)`` (``decode``) turns the uploaded bytes into a ``Photo``: JPEG or PNG
   only, checked from the content (not the file name), size limits (bytes, pixels, decoding
   memory) checked before decoding, any colour mode turned into RGB tile by tile while
   downscaling so the longest side is at most 2048 px, EXIF orientation applied. Every
   problem with the file is a ``PhotoError`` whose message tells the person what to do.
2. ``detect_face(image)`` (``detect``) finds the largest face, a ``Face`` (``face``): with the
   five-point detector (``yunet``: libfacedetection's YuNet through the ``yuface`` wheel) its
   box and five landmarks, the same five CelebA annotates; where that is not installed or
   finds nothing, with OpenCV's Haar cascades its box and, when it can, the two eyes; ``None``
   when there is no face.
3. ``align_to_face(face)`` (five points, else eyes, else face box), ``align_to_points(points)``
   or ``manual_alignment(shape, zoom, offset)`` (``align``) gives an ``Alignment`` onto a
   178 x 218 aligned image (``CELEBA_SIZE``); ``align_photo`` chains detection and
   alignment, falling back to the centred manual crop.
4. ``example_photo()`` (``example``): a real photo for people with none at hand
   (scikit-image's public-domain astronaut portrait, as PNG bytes).

Points are ``(x, y)`` in pixels, x to the right and y downward; images are
``[H, W, 3] uint8`` RGB.
"""

from mist_core.data.landmarks import CELEBA_LANDMARKS, CELEBA_SIZE
from mist_core.photos.align import (
    Alignment,
    align_photo,
    align_to_face,
    align_to_points,
    fit_similarity,
    manual_alignment,
)
from mist_core.photos.decode import Photo, PhotoError, load_photo
from mist_core.photos.detect import detect_face
from mist_core.photos.example import EXAMPLE_CREDIT, example_available, example_photo
from mist_core.photos.face import DETECTORS, Face
from mist_core.photos.yunet import available as five_point_detector_available
from mist_core.photos.yunet import detect_five_points

__all__ = [
    "CELEBA_LANDMARKS",
    "CELEBA_SIZE",
    "DETECTORS",
    "EXAMPLE_CREDIT",
    "Alignment",
    "Face",
    "Photo",
    "PhotoError",
    "align_photo",
    "align_to_face",
    "align_to_points",
    "detect_face",
    "detect_five_points",
    "example_available",
    "example_photo",
    "fit_similarity",
    "five_point_detector_available",
    "load_photo",
    "manual_alignment",
]
