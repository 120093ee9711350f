"""Decoding an uploaded JPEG or PNG safely into an upright RGB ``Photo``.

Every problem with the file is a ``PhotoError`` whose message tells the person what to do.
Size limits (bytes, pixels, decoding memory) are checked before anything is decoded, and the
peak memory of a decode stays within about the decoding limit (200 MB) + 100 MB.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import struct
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from mist_core.machine import available_memory_bytes
from mist_core.photos.headers import JpegFrame, jpeg_frame, png_size

__all__ = ["Photo", "PhotoError", "load_photo"]

logger = logging.getLogger(__name__)

_MB = 2**20


class PhotoError(ValueError):
    """The uploaded file cannot be used as a photo; the message is meant for the person."""


def _as_points(points: np.ndarray | Sequence[float] | Sequence[Sequence[float]]) -> np.ndarray:
    """Points ``[N, 2]`` or ``[2]`` ``(x, y)`` as float64, same shape; ValueError otherwise."""
    array = np.asarray(points, dtype=np.float64)
    if array.shape[-1:] != (2,) or array.ndim > 2:
        raise ValueError(f"points must be [N, 2] or [2] (x, y), got shape {array.shape}")
    return array


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


def _as_image(image: np.ndarray | Photo) -> np.ndarray:
    """A ``Photo``'s image, or a checked ``[H, W, 3] uint8`` array (TypeError/ValueError)."""
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


# --------------------------------------------------------------------------------------------
# The format, from the content
# --------------------------------------------------------------------------------------------

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
    """``"JPEG"`` or ``"PNG"`` from the magic number; PhotoError naming what else it is."""
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


# --------------------------------------------------------------------------------------------
# Limits, checked before decoding
# --------------------------------------------------------------------------------------------

# Decoding memory. The decoder (PIL, libpng, libjpeg) needs the image as stored, in its own
# mode, at full size (JPEGs at the reduced scale chosen with ``Image.draft``), plus for
# multi-scan JPEGs all their DCT coefficients; that is what the limit is checked on, before
# decoding. Everything after it (mode conversion, transparency, 16 bits) is done on tiles of
# at most ``_TILE_PIXELS`` full-size pixels, and the resizing holds at most a
# ``max_side`` x ``6 * max_side`` RGB image, so the whole peak stays within about the
# limit + 100 MB.
_DECODE_BUDGET = 200 * _MB
_TILE_PIXELS = 1 << 20


def _check_arguments(data: object, limits: dict[str, int | None]) -> bytes:
    """``data`` as bytes (TypeError if it is not bytes-like); ValueError for a bad limit."""
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    for name, value in limits.items():
        if name == "max_memory" and value is None:  # the default: from the free memory
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return data


def _check_file_size(data: bytes, max_bytes: int) -> None:
    """Refuse an empty file or one over ``max_bytes``."""
    if len(data) == 0:
        raise PhotoError("The file is empty. Please upload a photo (JPEG or PNG).")
    if len(data) > max_bytes:
        raise PhotoError(
            f"This file is too big ({len(data) / _MB:.1f} MB; the limit is "
            f"{max_bytes / _MB:.0f} MB). Please upload a smaller photo."
        )


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse an image of more than ``max_pixels`` pixels, naming its size."""
    if width * height > max_pixels:
        raise PhotoError(
            f"This photo is too large: {width} x {height} pixels "
            f"({width * height / 1e6:.0f} megapixels; the limit is {max_pixels / 1e6:.0f} "
            "megapixels). Please upload a smaller version of it."
        )


def _damaged(fmt: str) -> PhotoError:
    """The refusal of a file the decoder cannot read."""
    return PhotoError(
        f"This {fmt} file could not be read: it seems damaged or incomplete. "
        "Please upload it again or try another photo."
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


@dataclass(frozen=True)
class _Limits:
    """What one ``load_photo`` call accepts; see its arguments."""

    max_pixels: int
    max_side: int
    memory: int  # bytes the decoder may need
    memory_words: str  # how the memory limit is named in a message


def _check_memory(
    im: Image.Image, size: tuple[int, int], frame: JpegFrame | None, fmt: str, limits: _Limits
) -> None:
    """Refuse ``im`` (opened, drafted, not decoded) when decoding it needs too much memory.

    ``size`` is the stored ``(width, height)``, for the message.
    """
    need = im.size[0] * im.size[1] * _bytes_per_pixel(im.mode)
    if frame is not None:
        need += frame.coefficient_bytes
    if need > limits.memory:
        width, height = size
        advice = "Please upload a smaller version of it"
        advice += " (or save it as JPEG)." if fmt == "PNG" else "."
        raise PhotoError(
            f"This photo is too large to open safely: decoding its {width} x {height} pixels "
            f"would take about {need / _MB:.0f} MB of memory ({limits.memory_words}). {advice}"
        )


# --------------------------------------------------------------------------------------------
# Decoding: any mode to RGB, in tiles, while downscaling
# --------------------------------------------------------------------------------------------

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
    factor)`` result. RGB and L images without transparency need no conversion and are
    resized directly.
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


@contextlib.contextmanager
def _decoder_failures(fmt: str) -> Iterator[None]:
    """Turn what PIL raises on a damaged, hostile or too large file into a ``PhotoError``.

    Only PIL's own work runs inside: ``PhotoError`` is a ``ValueError``, so one of our
    refusals raised in here would be mistaken for a damaged file.
    """
    try:
        yield
    except Image.DecompressionBombError:
        raise PhotoError(
            "This photo has too many pixels to be opened safely. "
            "Please upload a smaller version of it."
        ) from None
    except _DECODE_ERRORS as error:
        logger.info("could not decode a %s upload: %r", fmt, error)
        raise _damaged(fmt) from None
    except MemoryError:
        raise PhotoError(
            "There is not enough memory to open this photo. Please upload a smaller version."
        ) from None


@dataclass(frozen=True)
class _Decoded:
    """A decoded photo's pixels and sizes; see ``Photo``."""

    image: np.ndarray  # [H, W, 3] uint8, upright, longest side at most max_side
    original_size: tuple[int, int]  # (height, width) upright, before downscaling
    scale: float


def _draft(im: Image.Image, k: float) -> None:
    """Have a JPEG decoded at 1/2, 1/4 or 1/8 scale, keeping at least ``k`` x its size."""
    width, height = im.size
    im.draft(None, (math.ceil(width * k), math.ceil(height * k)))


def _upright_rgb(im: Image.Image, size: tuple[int, int], k: float) -> _Decoded:
    """Decode ``im``, shrink it to ``k`` x ``size`` in RGB, then apply its EXIF orientation.

    ``size`` is the stored ``(width, height)`` (a drafted JPEG's ``im.size`` is smaller).
    Resized as stored, then turned upright: turning is cheap at the working size.
    """
    width, height = size
    im.load()
    small = _shrink_to_rgb(im, (max(1, round(width * k)), max(1, round(height * k))))
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(_orientation(im))
    if transpose is not None:
        small = small.transpose(transpose)
        if transpose in _TURNS:
            width, height = height, width
    return _Decoded(np.array(small, dtype=np.uint8), original_size=(height, width), scale=k)


def _decode(data: bytes, fmt: str, frame: JpegFrame | None, limits: _Limits) -> _Decoded:
    """Open (headers only), check the limits, then decode, shrink to RGB and turn upright."""
    with warnings.catch_warnings():
        # Our own limits are checked first; PIL's global decompression-bomb check stays on
        # as a second guard, but its warning is not for the person.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _decoder_failures(fmt):
            im = Image.open(io.BytesIO(data), formats=[fmt])
        with im:
            width, height = im.size
            if width < 1 or height < 1:
                raise _damaged(fmt)
            _check_pixels(width, height, limits.max_pixels)
            k = min(1.0, limits.max_side / max(width, height))
            if fmt == "JPEG" and k < 0.5:
                with _decoder_failures(fmt):
                    _draft(im, k)
            _check_memory(im, (width, height), frame, fmt, limits)
            with _decoder_failures(fmt):
                return _upright_rgb(im, (width, height), k)


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
    data = _check_arguments(
        data,
        {
            "max_bytes": max_bytes,
            "max_pixels": max_pixels,
            "max_side": max_side,
            "max_memory": max_memory,
        },
    )
    _check_file_size(data, max_bytes)
    fmt = _sniff_format(data)
    if fmt == "JPEG":
        frame = jpeg_frame(data)
        size = None if frame is None else (frame.width, frame.height)
    else:
        frame, size = None, png_size(data)
    if size is not None:  # else PIL reads it below, still before decoding
        _check_pixels(*size, max_pixels)
    memory, memory_words = _memory_limit(max_memory)
    limits = _Limits(max_pixels, max_side, memory, memory_words)
    t0 = time.perf_counter()
    decoded = _decode(data, fmt, frame, limits)
    decoded.image.setflags(write=False)
    height, width = decoded.original_size
    logger.debug("decoded a %s of %dx%d in %.3f s", fmt, width, height, time.perf_counter() - t0)
    return Photo(decoded.image, decoded.original_size, decoded.scale, fmt)
