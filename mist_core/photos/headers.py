"""What a JPEG or PNG file's headers say, read from the bytes without decoding anything.

PIL's lazy ``Image.open`` also reads only the headers, but it is not enough here: it refuses
an image over its decompression-bomb limit before telling its size (so the person could not
be told "20000 x 20000 pixels"), and it skips a JPEG's scan header, whose component count
decides whether libjpeg must hold every DCT coefficient while decoding. Reading the headers
ourselves also means no PIL code runs on a file that is already known to be too large.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from dataclasses import dataclass

__all__ = ["JpegFrame", "jpeg_frame", "png_size"]

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...); not DHT (C4),
# JPG (C8) or DAC (CC).
_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
# Those of them whose image comes in several (progressive) scans.
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_FILL = 0xFF
_END_OF_IMAGE = 0xD9
_START_OF_SCAN = 0xDA


@dataclass(frozen=True)
class JpegFrame:
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


def _read_frame(data: bytes, pos: int, marker: int) -> JpegFrame | None:
    """The start-of-frame segment at ``pos``; None when the file ends inside it."""
    if pos + 10 > len(data):
        return None
    height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
    count = data[pos + 9]
    factors = data[pos + 10 : pos + 10 + 3 * count]
    sampling = tuple((b >> 4, b & 15) for b in factors[1::3])
    if len(sampling) != count or any(h == 0 or v == 0 for h, v in sampling):
        sampling = ()  # libjpeg refuses these; the decoder says the file is damaged
    return JpegFrame(width, height, sampling, marker in _JPEG_PROGRESSIVE, None)


def jpeg_frame(data: bytes) -> JpegFrame | None:
    """The JPEG's frame header and its first scan's component count; None if not found."""
    pos, n = 2, len(data)
    frame: JpegFrame | None = None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == _FILL:
            pos += 1
            continue
        if marker == 0xD8 or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no payload
            pos += 2
            continue
        if marker == _END_OF_IMAGE:
            break
        if marker == _START_OF_SCAN:  # its first payload byte is its component count
            if frame is not None and pos + 4 < n:
                return dataclasses.replace(frame, first_scan_components=data[pos + 4])
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF and frame is None:
            frame = _read_frame(data, pos, marker)
            if frame is None:
                return None
        pos += 2 + length
    return frame


def png_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's IHDR chunk; None when it is not there."""
    # Signature (8), IHDR length (4) and type (4), then width and height (4 + 4).
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height
