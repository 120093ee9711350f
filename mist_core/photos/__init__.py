"""A person's photo, in the framing of aligned CelebA: safe decoding, face detection, alignment.

This is the library side of the dashboard's "Your photo" page (it does not import streamlit):

1. ``load_photo(data)`` (``decode``) turns the uploaded bytes into a ``Photo``: JPEG or PNG
   only, checked from the content (not the file name), size limits (bytes, pixels, decoding
   memory) checked before decoding, any colour mode turned into RGB tile by tile while
   downscaling so the longest side is at most 2048 px, EXIF orientation applied. Every
   problem with the file is a ``PhotoError`` whose message tells the person what to do.
2. ``detect_face(image)`` (``detect``) finds the largest face (OpenCV Haar cascades) and,
   when it can, the two eyes; ``None`` when there is no face.
3. ``align_to_face(face)`` or ``manual_alignment(shape, zoom, offset)`` (``align``) gives an
   ``Alignment`` onto a 178 x 218 aligned image (``CELEBA_SIZE``); ``align_photo`` chains
   detection and alignment, falling back to the centred manual crop.

Points are ``(x, y)`` in pixels, x to the right and y downward; images are
``[H, W, 3] uint8`` RGB.
"""

from mist_core.data.landmarks import CELEBA_LANDMARKS, CELEBA_SIZE
from mist_core.photos.align import Alignment, align_photo, align_to_face, manual_alignment
from mist_core.photos.decode import Photo, PhotoError, load_photo
from mist_core.photos.detect import Face, detect_face

__all__ = [
    "CELEBA_LANDMARKS",
    "CELEBA_SIZE",
    "Alignment",
    "Face",
    "Photo",
    "PhotoError",
    "align_photo",
    "align_to_face",
    "detect_face",
    "load_photo",
    "manual_alignment",
]
