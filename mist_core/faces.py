"""A person's photo, in the framing of aligned CelebA: safe decoding, face detection, alignment.

This is the library side of the dashboard's "Your photo" page (it does not import streamlit):

1. ``load_photo(data)`` turns the uploaded bytes into a ``Photo``: JPEG or PNG only, checked
   from the content (not the file name), size limits (bytes, pixels, decoding memory)
   checked before decoding, any colour mode turned into RGB tile by tile while downscaling
   so the longest side is at most 2048 px, EXIF orientation applied; its peak memory stays
   within about the decoding limit (200 MB) + 100 MB. Every problem with the file is a
   ``PhotoError`` whose message tells the person what to do.
2. ``detect_face(image)`` finds the largest face (OpenCV Haar cascades) and, when it can,
   the two eyes; ``None`` when there is no face.
3. ``align_to_face(face)`` or ``manual_alignment(shape, zoom, offset)`` gives an
   ``Alignment``: a similarity transform from photo coordinates to a 178 x 218 aligned image
   (``CELEBA_SIZE``); ``Alignment.warp`` draws the aligned image, ``to_aligned``/``to_photo``
   carry points both ways, so landmarks predicted on the aligned image can be drawn back on
   the photo. ``align_photo`` chains detection and alignment, falling back to the centred
   manual crop.

Coordinate convention (as everywhere in this project): points are ``(x, y)`` in pixels, x to
the right and y downward; pixel (row ``i``, column ``j``) covers x in ``[j, j + 1)`` and y in
``[i, i + 1)``, so its centre is ``(j + 0.5, i + 0.5)``. Images are ``[H, W, 3] uint8`` RGB.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import struct
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

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

logger = logging.getLogger(__name__)

CELEBA_SIZE: tuple[int, int] = (218, 178)
"""(height, width) of an aligned CelebA image."""

CELEBA_LANDMARKS: dict[str, tuple[float, float]] = {
    "left_eye": (69.0, 111.2),
    "right_eye": (107.6, 111.5),
    "nose": (88.5, 135.3),
    "left_mouth": (71.5, 152.1),
    "right_mouth": (105.4, 152.3),
}
"""Mean ``(x, y)`` of the five landmarks in aligned CelebA ("left" = image-left)."""

# Where a Haar face box (haarcascade_frontalface_alt2) falls in an aligned 178 x 218 image:
# centre (x, y) and width (the boxes are square). Measured by detecting faces on 122 of 150
# of the project's synthetic faces (drawn in the aligned-CelebA layout, rendered at twice the
# size and padded): mean centre (88.2, 122.9) (sd 2.2, 2.8), mean width 103.3 (sd 9.2). That
# is about 2.7 inter-eye distances wide, centred 0.24 inter-eye distances above the centroid
# of eyes and mouth corners, in line with the cascade's training geometry (eyes at ~0.39 of
# the box height). It is only used when the eyes cannot be found, and is not checked on real
# CelebA photos.
_FACE_BOX_CENTRE = (88.2, 122.9)
_FACE_BOX_WIDTH = 103.3
# The eyes relative to that box, in fractions of the box width from its top-left corner; used
# to choose among eye candidates.
_EYE_FRACTIONS = (
    (
        (CELEBA_LANDMARKS["left_eye"][0] - _FACE_BOX_CENTRE[0]) / _FACE_BOX_WIDTH + 0.5,
        (CELEBA_LANDMARKS["left_eye"][1] - _FACE_BOX_CENTRE[1]) / _FACE_BOX_WIDTH + 0.5,
    ),
    (
        (CELEBA_LANDMARKS["right_eye"][0] - _FACE_BOX_CENTRE[0]) / _FACE_BOX_WIDTH + 0.5,
        (CELEBA_LANDMARKS["right_eye"][1] - _FACE_BOX_CENTRE[1]) / _FACE_BOX_WIDTH + 0.5,
    ),
)

_MB = 2**20
_DETECT_SIDE = 640  # face detection runs on a grey copy whose longest side is at most this
_EYE_ROI_WIDTH = 240  # the eye search region is resized to this width
_BORDER_GREY = 127

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class PhotoError(ValueError):
    """The uploaded file cannot be used as a photo; the message is meant for the person."""


@dataclass(frozen=True, eq=False)
class Photo:
    """A decoded photo, ready for detection and alignment.

    Attributes:
        image: ``[H, W, 3] uint8`` RGB, upright (EXIF orientation applied), downscaled so that
            its longest side is at most ``max_side``; read-only.
        original_size: ``(height, width)`` of the upright photo before downscaling.
        scale: working size / original size (<= 1): a point ``p`` of ``image`` is ``p /
            scale`` in the original photo (each axis exact to within half an original pixel,
            since the working size is rounded to whole pixels).
        format: ``"JPEG"`` or ``"PNG"``.
    """

    image: np.ndarray
    original_size: tuple[int, int]
    scale: float
    format: str

    def to_original(self, points: np.ndarray | Sequence[float]) -> np.ndarray:
        """``[N, 2]`` (or ``[2]``) points of ``image`` -> the same points in the original."""
        return _as_points(points) / self.scale


# Magic numbers of formats people upload by mistake: (prefix, what it looks like).
_LOOKALIKES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"8BPS", "a Photoshop (PSD) file"),
    (b"PK\x03\x04", "a ZIP archive or an Office document"),
    (b"\x00\x00\x01\x00", "an icon (ICO) file"),
    (b"\xff\x0a", "a JPEG XL image"),
    (b"\x00\x00\x00\x0cJXL ", "a JPEG XL image"),
)
_CONVERT_HINT = "Please export or save it as JPEG or PNG (or take a screenshot) and upload that."


def _looks_like(data: bytes) -> str | None:
    """A guess at what a non-JPEG, non-PNG file is, for the error message; None if unsure."""
    for prefix, name in _LOOKALIKES:
        if data.startswith(prefix):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WebP image"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "a HEIC/HEIF photo (the format iPhones use)"
        if brand in (b"avif", b"avis"):
            return "an AVIF image"
        return "a video (MP4/MOV)"
    head = data[:1024].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")):
        return "an SVG or XML file"
    if head.startswith((b"<!doctype html", b"<html")):
        return "a web page (HTML)"
    try:
        text = data[:1024].decode("utf-8")
    except UnicodeDecodeError:
        # A cut-off multi-byte character at the end is still text.
        try:
            text = data[:1020].decode("utf-8")
        except UnicodeDecodeError:
            return None
    if text and all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        return "a text file"
    return None


def _sniff_format(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    what = _looks_like(data)
    if what is None:
        raise PhotoError(
            "This file is not a JPEG or PNG image (or it is damaged). "
            "Please upload a photo saved as JPEG or PNG."
        )
    raise PhotoError(
        f"This file is not a JPEG or PNG image (it looks like {what}). {_CONVERT_HINT}"
    )


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...); not DHT (C4),
# JPG (C8) or DAC (CC).
_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
# Those of them whose image comes in several (progressive) scans.
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


@dataclass(frozen=True)
class _JpegFrame:
    """What a JPEG's headers say about decoding it, read without decoding.

    Attributes:
        width, height: of the image, in pixels.
        sampling: ``(horizontal, vertical)`` sampling factor of each colour component.
        progressive: coded in progressive scans.
        first_scan_components: how many components the first scan carries; None when the
            headers end before a scan.
    """

    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]
    progressive: bool
    first_scan_components: int | None

    @property
    def coefficient_bytes(self) -> int:
        """Bytes libjpeg holds for the whole image's DCT coefficients while decoding.

        It decodes line by line when the image is one scan of all components, but keeps
        every coefficient (2 bytes each, at full size whatever the decoding scale) when the
        image comes in several scans: progressive, or a first scan without every component.
        """
        if not self.sampling:
            return 0
        several_scans = self.progressive or (self.first_scan_components or 0) < len(self.sampling)
        if not several_scans:
            return 0
        h_max = max(h for h, _ in self.sampling)
        v_max = max(v for _, v in self.sampling)
        blocks = 0
        for h, v in self.sampling:
            blocks += math.ceil(self.width * h / h_max / 8) * math.ceil(
                self.height * v / v_max / 8
            )
        return 128 * blocks


def _jpeg_frame(data: bytes) -> _JpegFrame | None:
    """The JPEG's frame header and its first scan's component count; None if not found."""
    pos, n = 2, len(data)
    frame: _JpegFrame | None = None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD8 or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no payload
            pos += 2
            continue
        if marker == 0xD9:  # end of image
            break
        if marker == 0xDA:  # start of scan: its first payload byte is its component count
            if frame is not None and pos + 4 < n:
                return dataclasses.replace(frame, first_scan_components=data[pos + 4])
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF and frame is None:
            if pos + 10 > n:
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            count = data[pos + 9]
            factors = data[pos + 10 : pos + 10 + 3 * count]
            sampling = tuple((b >> 4, b & 15) for b in factors[1::3])
            if len(sampling) != count or any(h == 0 or v == 0 for h, v in sampling):
                sampling = ()  # libjpeg refuses these; the decoder says it is damaged
            frame = _JpegFrame(width, height, sampling, marker in _JPEG_PROGRESSIVE, None)
        pos += 2 + length
    return frame


def _header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """``(width, height)`` read from the file header without decoding; None if not found."""
    if fmt == "PNG":
        # Signature (8), IHDR length (4) and type (4), then width and height (4 + 4).
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return struct.unpack(">II", data[16:24])
    frame = _jpeg_frame(data)
    return None if frame is None else (frame.width, frame.height)


def _too_many_pixels(width: int, height: int, max_pixels: int) -> PhotoError:
    return PhotoError(
        f"This photo is too large: {width} x {height} pixels ({width * height / 1e6:.0f} "
        f"megapixels; the limit is {max_pixels / 1e6:.0f} megapixels). "
        "Please upload a smaller version of it."
    )


# Decoding memory. The decoder (PIL, libpng, libjpeg) needs the image as stored, in its own
# mode, at full size (JPEGs at the reduced scale chosen with ``Image.draft``), plus for
# multi-scan JPEGs all their DCT coefficients; that is what the limit is checked on, before
# decoding. Everything after it (mode conversion, transparency, 16 bits) is done on tiles of
# at most ``_TILE_PIXELS`` full-size pixels, and the resizing holds at most a
# ``max_side`` x ``6 * max_side`` RGB image, so the whole peak stays within about the
# limit + 100 MB.
_DECODE_BUDGET = 200 * _MB
_TILE_PIXELS = 1 << 20
# As PIL's ``resize(reducing_gap=3.0)``: average whole blocks of pixels down to at least 3x
# the target size, then Lanczos.
_REDUCING_GAP = 3.0
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Those that turn the image by a quarter (width and height swap).
_TURNS = frozenset(
    {
        Image.Transpose.TRANSPOSE,
        Image.Transpose.ROTATE_270,
        Image.Transpose.TRANSVERSE,
        Image.Transpose.ROTATE_90,
    }
)
# What a damaged file makes PIL (or its decoders) raise.
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    struct.error,
    EOFError,
    KeyError,
)


def _bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel of a PIL image in ``mode`` (PIL stores 2 to 4 bands in 4 bytes)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _available_memory() -> int | None:
    """Memory this machine has free now (bytes), if known."""
    try:
        from mist_core.resources import available_memory_bytes
    except ImportError:
        return None
    try:
        return available_memory_bytes()
    except OSError as error:
        logger.debug("could not read the free memory: %r", error)
        return None


def _memory_limit(max_memory: int | None) -> tuple[int, str]:
    """The decoding memory limit in bytes, and how to name it in a message."""
    if max_memory is not None:
        return max_memory, f"the limit is {max_memory / _MB:.0f} MB"
    available = _available_memory()
    if available is not None and available // 4 < _DECODE_BUDGET:
        limit = max(1, available // 4)
        return limit, (
            f"the limit is {limit / _MB:.0f} MB, a quarter of the {available / _MB:.0f} MB "
            "this computer has free now"
        )
    return _DECODE_BUDGET, f"the limit is {_DECODE_BUDGET / _MB:.0f} MB"


def _too_much_memory(width: int, height: int, fmt: str, need: int, limit: str) -> PhotoError:
    advice = "Please upload a smaller version of it"
    advice += " (or save it as JPEG)." if fmt == "PNG" else "."
    return PhotoError(
        f"This photo is too large to open safely: decoding its {width} x {height} pixels "
        f"would take about {need / _MB:.0f} MB of memory ({limit}). {advice}"
    )


def _has_alpha(im: Image.Image) -> bool:
    return (
        im.mode in _ALPHA_MODES
        or (im.mode == "P" and "transparency" in im.info)
        or (im.mode in ("RGB", "L") and "transparency" in im.info)
    )


def _tile_to_rgb(tile: Image.Image, alpha: bool, divide: bool) -> np.ndarray:
    """A tile of any mode -> ``[h, w, 3] uint8`` RGB, in integers where it can.

    Transparency is composited on white, rounded exactly: ``round((c a + 255 (255 - a)) /
    255)`` in uint16 (at most 65025 + 127). 16-bit grey becomes ``round(v / 257)``;
    32-bit "I"/"F" grey is divided by 257 when ``divide`` (its maximum over the whole image
    is above 255).
    """
    mode = tile.mode
    if mode.startswith("I;16"):
        values = np.asarray(tile).astype(np.uint32)
        grey = ((values + 128) // 257).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("I", "F"):
        values = np.asarray(tile, dtype=np.float64)
        if divide:
            values = values / 257.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if alpha:
        rgba = np.asarray(tile.convert("RGBA"))
        opacity = rgba[:, :, 3:].astype(np.uint16)
        blended = rgba[:, :, :3].astype(np.uint16) * opacity + 255 * (255 - opacity) + 127
        return (blended // 255).astype(np.uint8)
    return np.asarray(tile.convert("RGB"))


def _shrink_to_rgb(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A decoded image of any mode, resized to ``size`` ``(width, height)``, in RGB.

    What converting the whole image to RGB (transparency on white) and then
    ``resize(size, LANCZOS, reducing_gap=3.0)`` gives (a box average by whole factors, then
    a horizontal and a vertical Lanczos pass), to within one level where PIL would have run
    the two passes in the other order; but only tiles of ``_TILE_PIXELS`` pixels are
    converted at full size at a time: each tile is converted and box-averaged, each band of
    rows gets its horizontal pass, then the vertical pass runs on the ``width x (height /
    factor)`` result. RGB and L images without transparency are resized directly (exactly
    as before: no conversion needed).
    """
    alpha = _has_alpha(im)
    if im.mode in ("RGB", "L") and not alpha:
        return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP).convert("RGB")
    width, height = im.size
    out_w, out_h = size
    fx = int(width / out_w / _REDUCING_GAP) or 1
    fy = int(height / out_h / _REDUCING_GAP) or 1
    reduced_w, reduced_h = -(-width // fx), -(-height // fy)
    divide = False
    if im.mode in ("I", "F"):
        divide = bool(im.getextrema()[1] > 255)  # type: ignore[operator]
    rows = fy * max(1, _TILE_PIXELS // (width * fy))
    cols = min(width, fx * max(1, _TILE_PIXELS // (rows * fx)))
    lanczos = Image.Resampling.LANCZOS
    horizontal = Image.new("RGB", (out_w, reduced_h))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        band = np.empty((-(-(bottom - top) // fy), reduced_w, 3), np.uint8)
        for left in range(0, width, cols):
            tile = im.crop((left, top, min(width, left + cols), bottom))
            rgb = Image.fromarray(_tile_to_rgb(tile, alpha, divide))
            if fx > 1 or fy > 1:
                rgb = rgb.reduce((fx, fy))
            band[:, left // fx : left // fx + rgb.width] = np.asarray(rgb)
        band_rows = band.shape[0]
        # The horizontal pass only: same height, the full height as box.
        passed = Image.fromarray(band).resize(
            (out_w, band_rows), lanczos, box=(0, 0, width / fx, band_rows)
        )
        horizontal.paste(passed, (0, top // fy))
    # The vertical pass only: same width, the full width as box.
    return horizontal.resize(size, lanczos, box=(0, 0, out_w, height / fy))


def _orientation(im: Image.Image) -> int:
    """The EXIF (or XMP) orientation of a decoded image; 1 when absent or unreadable."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except _DECODE_ERRORS as error:
        logger.info("ignoring unreadable EXIF data: %r", error)
        return 1
    return value if isinstance(value, int) else 1


def load_photo(
    data: bytes,
    *,
    max_bytes: int = 25 * _MB,
    max_pixels: int = 100_000_000,
    max_side: int = 2048,
    max_memory: int | None = None,
) -> Photo:
    """Decode an uploaded JPEG or PNG safely into an upright RGB ``Photo``.

    Checks, in order: the byte size (before anything else), the format from the content (a
    PDF renamed ``.jpg`` is refused, naming what it looks like), the pixel count from the
    header (before decoding), then the memory decoding needs (also before decoding). Large
    JPEGs are decoded at a reduced scale (``Image.draft``), so a 40-megapixel photo loads
    in a fraction of a second. Any colour mode becomes RGB (transparency on white, 16-bit
    scaled to 8-bit) tile by tile while the photo is downscaled so that its longest side is
    at most ``max_side``; then the EXIF orientation is applied. Peak memory: about what
    the decoder needs (at most the memory limit) + 100 MB.

    Args:
        data: the file's bytes.
        max_bytes: largest accepted file size.
        max_pixels: largest accepted width x height, read from the header.
        max_side: longest side of ``Photo.image``.
        max_memory: largest memory (bytes) the decoder may need: the image as stored at
            full size (4 bytes per pixel for RGB(A), 2 for 16-bit grey, 1 for grey and
            palette), JPEGs at their reduced decoding scale plus, when progressive, 2 bytes
            per coefficient. None: 200 MB, or a quarter of the machine's free memory if that
            is less.

    Returns:
        A ``Photo`` with ``image`` ``[H, W, 3] uint8``.

    Raises:
        PhotoError: for any problem with the file (wrong format, too big, damaged).
        ValueError: for invalid limits.
    """
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    for name, value in (
        ("max_bytes", max_bytes),
        ("max_pixels", max_pixels),
        ("max_side", max_side),
        ("max_memory", 1 if max_memory is None else max_memory),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if len(data) == 0:
        raise PhotoError("The file is empty. Please upload a photo (JPEG or PNG).")
    if len(data) > max_bytes:
        raise PhotoError(
            f"This file is too big ({len(data) / _MB:.1f} MB; the limit is "
            f"{max_bytes / _MB:.0f} MB). Please upload a smaller photo."
        )
    fmt = _sniff_format(data)
    damaged = PhotoError(
        f"This {fmt} file could not be read: it seems damaged or incomplete. "
        "Please upload it again or try another photo."
    )
    frame = _jpeg_frame(data) if fmt == "JPEG" else None
    size = (frame.width, frame.height) if frame is not None else _header_size(data, fmt)
    if size is not None and size[0] * size[1] > max_pixels:
        raise _too_many_pixels(size[0], size[1], max_pixels)
    limit, limit_words = _memory_limit(max_memory)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # Our own limits (max_pixels, max_memory) are checked first; PIL's global
            # decompression-bomb check stays on as a second guard, but its warning is not
            # for the person.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                width, height = im.size
                if width < 1 or height < 1:
                    raise damaged
                if width * height > max_pixels:
                    raise _too_many_pixels(width, height, max_pixels)
                k = min(1.0, max_side / max(width, height))
                if fmt == "JPEG" and k < 0.5:
                    # Decode at 1/2, 1/4 or 1/8 scale, keeping at least the target size.
                    im.draft(None, (math.ceil(width * k), math.ceil(height * k)))
                need = im.size[0] * im.size[1] * _bytes_per_pixel(im.mode)
                if frame is not None:
                    need += frame.coefficient_bytes
                if need > limit:
                    raise _too_much_memory(width, height, fmt, need, limit_words)
                im.load()
                # Resized as stored, then turned upright (cheap at the working size).
                small = _shrink_to_rgb(im, (max(1, round(width * k)), max(1, round(height * k))))
                transpose = _TRANSPOSE_FOR_ORIENTATION.get(_orientation(im))
                if transpose is not None:
                    small = small.transpose(transpose)
                    if transpose in _TURNS:
                        width, height = height, width
                image = np.array(small, dtype=np.uint8)
    except PhotoError:
        raise
    except Image.DecompressionBombError:
        raise PhotoError(
            "This photo has too many pixels to be opened safely. "
            "Please upload a smaller version of it."
        ) from None
    except _DECODE_ERRORS as error:
        logger.info("could not decode a %s upload: %r", fmt, error)
        raise damaged from None
    except MemoryError:
        raise PhotoError(
            "There is not enough memory to open this photo. Please upload a smaller version."
        ) from None
    image.setflags(write=False)
    logger.debug("decoded a %s of %dx%d in %.3f s", fmt, width, height, time.perf_counter() - t0)
    return Photo(image=image, original_size=(height, width), scale=k, format=fmt)


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Face:
    """A detected face, in the photo's pixel coordinates.

    Attributes:
        box: ``(x, y, w, h)``: the face box's top-left corner and size.
        eyes: the centres ``(x, y)`` of the image-left eye and the image-right eye, or None
            when they were not both found.
        score: the number of merged Haar detections behind the box (higher is surer; ~3-100).
    """

    box: tuple[float, float, float, float]
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None
    score: float = 0.0


_CASCADES: dict[str, cv2.CascadeClassifier] = {}


def _cascade(name: str) -> cv2.CascadeClassifier:
    """A Haar cascade shipped with OpenCV, loaded once."""
    cascade = _CASCADES.get(name)
    if cascade is None:
        path = cv2.data.haarcascades + name
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"could not load OpenCV's Haar cascade {path}")
        _CASCADES[name] = cascade
    return cascade


def _as_image(image: np.ndarray | Photo) -> np.ndarray:
    if isinstance(image, Photo):
        return image.image
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array or a Photo, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be [H, W, 3] uint8 RGB, got shape {image.shape} and dtype {image.dtype}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    return image


def _find_eyes(
    grey: np.ndarray, box: tuple[float, float, float, float]
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The two eye centres within the upper part of the face ``box`` of ``grey``, or None."""
    bx, by, bw, bh = box
    height, width = grey.shape
    x0, x1 = max(0, math.floor(bx)), min(width, math.ceil(bx + bw))
    y0, y1 = max(0, math.floor(by + 0.15 * bh)), min(height, math.ceil(by + 0.6 * bh))
    if x1 - x0 < 8 or y1 - y0 < 4:
        return None
    roi = grey[y0:y1, x0:x1]
    r = _EYE_ROI_WIDTH / (x1 - x0)
    size = (_EYE_ROI_WIDTH, max(1, round((y1 - y0) * r)))
    roi = cv2.resize(roi, size, interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    roi = cv2.equalizeHist(roi)
    ry = size[1] / (y1 - y0)
    bw_roi = bw * r
    min_eye = max(10, round(0.1 * bw_roi))
    max_eye = max(min_eye + 1, round(0.45 * bw_roi))
    expected = [((bx + fx * bw - x0) * r, (by + fy * bh - y0) * ry) for fx, fy in _EYE_FRACTIONS]
    for name in ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml"):
        found = _cascade(name).detectMultiScale(
            roi,
            scaleFactor=1.1,
            minNeighbors=4,
            minSize=(min_eye, min_eye),
            maxSize=(max_eye, max_eye),
        )
        centres = [(ex + ew / 2, ey + eh / 2) for ex, ey, ew, eh in found]
        best, best_cost = None, math.inf
        for a in centres:
            for b in centres:
                dx, dy = b[0] - a[0], b[1] - a[1]
                # Image-left eye first, a plausible distance apart, roughly level.
                if not (0.25 * bw_roi <= dx <= 0.7 * bw_roi and abs(dy) <= 0.2 * bw_roi):
                    continue
                cost = math.dist(a, expected[0]) + math.dist(b, expected[1])
                if cost < best_cost:
                    best, best_cost = (a, b), cost
        if best is not None:
            # ROI pixel units -> photo coordinates (the resize maps continuous coordinates
            # by pure scaling).
            return tuple((x0 + x / r, y0 + y / ry) for x, y in best)  # type: ignore[return-value]
    return None


def detect_face(image: np.ndarray | Photo, *, find_eyes: bool = True) -> Face | None:
    """The largest frontal face in ``image`` (``[H, W, 3] uint8`` RGB), or None.

    Uses OpenCV's Haar cascades: the face (``haarcascade_frontalface_alt2``) on a grey copy
    whose longest side is at most 640 px, then the eyes (``haarcascade_eye``, or the
    eyeglasses variant) in the upper part of the face box at a finer scale. Takes ~0.1 s on
    a 2048 px photo. Faces narrower than ~5% of the photo's shorter side are not looked for.

    Returns:
        A ``Face`` in ``image``'s pixel coordinates; ``eyes`` is None when the two eyes were
        not both found (``align_to_face`` then uses the face box).
    """
    image = _as_image(image)
    t0 = time.perf_counter()
    height, width = image.shape[:2]
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    k = min(1.0, _DETECT_SIDE / max(height, width))
    small_size = (max(1, round(width * k)), max(1, round(height * k)))
    small = grey if k == 1.0 else cv2.resize(grey, small_size, interpolation=cv2.INTER_AREA)
    sx, sy = small_size[0] / width, small_size[1] / height
    small = cv2.equalizeHist(small)
    min_face = max(20, round(0.05 * min(small.shape)))
    if min(small.shape) < min_face:
        return None
    boxes, neighbours = _cascade("haarcascade_frontalface_alt2.xml").detectMultiScale2(
        small, scaleFactor=1.1, minNeighbors=5, minSize=(min_face, min_face)
    )
    if len(boxes) == 0:
        logger.debug("no face found (%.3f s)", time.perf_counter() - t0)
        return None
    i = int(np.argmax([w * h for _, _, w, h in boxes]))
    x, y, w, h = (float(v) for v in boxes[i])
    box = (x / sx, y / sy, w / sx, h / sy)
    eyes = _find_eyes(grey, box) if find_eyes else None
    logger.debug("face %s, eyes %s (%.3f s)", box, eyes, time.perf_counter() - t0)
    return Face(box=box, eyes=eyes, score=float(neighbours[i]))


# --------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------


def _as_points(points: np.ndarray | Sequence[float] | Sequence[Sequence[float]]) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.shape[-1:] != (2,) or array.ndim > 2:
        raise ValueError(f"points must be [N, 2] or [2] (x, y), got shape {array.shape}")
    return array


@dataclass(frozen=True, eq=False)
class Alignment:
    """A similarity transform from photo coordinates to an aligned image.

    A photo point ``p = (x, y)`` (continuous coordinates, convention of the module docstring)
    goes to ``matrix[:, :2] @ p + matrix[:, 2]`` in the aligned image of ``size``; ``warp``
    draws that image so that the aligned pixel whose centre is there shows the photo at ``p``.

    Attributes:
        matrix: ``[2, 3] float64`` (read-only).
        size: ``(height, width)`` of the aligned image; ``CELEBA_SIZE`` by default.
        method: ``"eyes"``, ``"face box"`` or ``"manual"``.
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


def align_to_face(face: Face, image_shape: Sequence[int] | None = None) -> Alignment:
    """The alignment putting ``face`` where aligned CelebA has its faces.

    With eyes: the similarity (rotation, uniform scale, shift) that puts the two eye centres
    exactly on ``CELEBA_LANDMARKS``' eyes (``method="eyes"``). Without: the uniform scale and
    shift that put the face box where a Haar face box falls in aligned CelebA
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
