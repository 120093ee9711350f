"""Fault test (issue 13, item 2): an uploaded photo cannot blow up the server's memory.

Each case is a file a careless or hostile user could upload on the "Your photo" page: small on
disk, huge once decoded (a 6000 x 6000 paletted PNG of 9 KB, a 16-bit gradient of 83 KB, the
largest paletted, 16-bit and RGBA PNGs the limits accept, a 40-megapixel JPEG, baseline and
progressive), or not a photo at all (a PDF renamed ``.jpg``, a truncated PNG), plus an RGBA
PNG over the decoding memory limit (refused before decoding).

Every case runs in a fresh Python process that does what the page does with an upload:
``load_photo`` then face detection and alignment (``align_photo``) and the aligned crop
(``Alignment.warp``). The process measures its own peak resident memory above its resident
memory just before (after the imports, a warm-up on a tiny photo and reading the file): on
Linux it resets its peak with ``/proc/self/clear_refs`` and reads ``VmHWM``; not
``ru_maxrss``, which a process started by ``exec`` inherits from its parent (this pytest
process, already hundreds of MB), so it would hide the peak. Each case must stay under
``LIMIT_MB`` above that baseline and end as expected (decoded, or refused with a
``PhotoError`` message); the test prints the peak of every case and how many held.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.slow

LIMIT_MB = 400.0
REPO = Path(__file__).resolve().parents[2]

# The child: imports what the server has imported, warms up on a tiny photo, then measures
# the peak of one upload. Prints one JSON line.
CHILD = r"""
import io, json, os, resource, sys, time

def _status_kb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None

def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        return True
    except OSError:
        return False

def _peak_mb():
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024

import numpy as np
from PIL import Image
from mist_core.photos import PhotoError, align_photo, load_photo

# Warm-up: what the first upload loads once (PIL plugins, OpenCV's cascades).
warm = io.BytesIO()
Image.new("RGB", (64, 48), (90, 120, 150)).save(warm, "PNG")
warm_photo = load_photo(warm.getvalue())
align_photo(warm_photo).warp(warm_photo)

with open(sys.argv[1], "rb") as f:
    data = f.read()
reset = _reset_peak()
rss = _status_kb("VmRSS")
baseline = rss / 1024 if (reset and rss is not None) else _peak_mb()
start = time.perf_counter()
try:
    photo = load_photo(data)
    alignment = align_photo(photo)
    aligned = alignment.warp(photo)
    outcome = {"decoded": list(photo.image.shape), "original": list(photo.original_size)}
except PhotoError as error:
    outcome = {"refused": str(error)}
seconds = time.perf_counter() - start
peak = _peak_mb()
print(json.dumps({
    "baseline_mb": baseline, "peak_mb": peak, "above_mb": peak - baseline,
    "exact_baseline": bool(reset and rss is not None), "seconds": seconds, **outcome,
}))
"""


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _paletted_png(side: int) -> bytes:
    """side x side, two palette colours (saved at 1 bit per pixel), colour 0 transparent."""
    im = Image.new("P", (side, side), 0)
    im.putpalette([255, 255, 255, 200, 30, 30])
    ImageDraw.Draw(im).rectangle((side // 4, side // 6, 3 * side // 4, 5 * side // 6), fill=1)
    return _encode(im, "PNG", transparency=0, compress_level=9)


def _sixteen_bit_png(side: int) -> bytes:
    """side x side 16-bit grey, a smooth horizontal gradient over the whole range."""
    x = np.arange(side, dtype=np.uint32)
    row = (x * 65535 // (side - 1)).astype(np.uint16)
    return _encode(Image.fromarray(np.repeat(row[None, :], side, axis=0)), "PNG", compress_level=9)


def _rgba_png(width: int, height: int) -> bytes:
    """Smooth colour gradients; a transparent band, a half-transparent band."""
    x = (np.arange(width, dtype=np.uint32) * 255 // max(1, width - 1)).astype(np.uint8)
    y = (np.arange(height, dtype=np.uint32) * 255 // max(1, height - 1)).astype(np.uint8)
    array = np.empty((height, width, 4), np.uint8)
    array[..., 0] = x[None, :]
    array[..., 1] = y[:, None]
    array[..., 2] = 128
    array[..., 3] = 255
    array[:, : width // 3, 3] = 0
    array[height // 3 : 2 * height // 3, :, 3] = 128
    return _encode(Image.fromarray(array, "RGBA"), "PNG")


def _jpeg_40mp(progressive: bool) -> bytes:
    """7300 x 5500 (40 megapixels) with some texture, as a camera could save it."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (55, 73, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((7300, 5500), Image.Resampling.BILINEAR)
    return _encode(im, "JPEG", quality=85, progressive=progressive)


def _pdf() -> bytes:
    return b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 50


def _truncated_png() -> bytes:
    """A 6000 x 6000 greyscale PNG cut in the middle of its pixel data."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (60, 60), dtype=np.uint8)
    data = _encode(Image.fromarray(small).resize((6000, 6000)), "PNG")
    return data[: len(data) // 2]


# name -> (what to make, expected outcome: "decoded" or "refused"). The "largest" cases are
# the largest accepted by the default limits (100 megapixels; 200 MB for the decoder: 1 byte
# per pixel for palette images, 2 for 16-bit grey, 4 for RGBA).
CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "a paletted PNG 6000x6000 (1 bit, transparency)": (lambda: _paletted_png(6000), "decoded"),
    "a2 paletted PNG 10000x10000 (largest)": (lambda: _paletted_png(10000), "decoded"),
    "b 16-bit PNG 6000x6000 gradient": (lambda: _sixteen_bit_png(6000), "decoded"),
    "b2 16-bit PNG 10000x10000 gradient (largest)": (lambda: _sixteen_bit_png(10000), "decoded"),
    "c RGBA PNG 7200x7200 (largest)": (lambda: _rgba_png(7200, 7200), "decoded"),
    "c2 RGBA PNG 10000x10000 (over the memory limit)": (
        lambda: _rgba_png(10000, 10000),
        "refused",
    ),
    "d JPEG 40 MP baseline": (lambda: _jpeg_40mp(False), "decoded"),
    "d2 JPEG 40 MP progressive": (lambda: _jpeg_40mp(True), "decoded"),
    "e PDF renamed .jpg": (_pdf, "refused"),
    "f truncated PNG 6000x6000": (_truncated_png, "refused"),
}


def _measure(path: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-800:]}"}
    return json.loads(lines[-1])


def test_photo_decoding_peak_memory_is_bounded(tmp_path: Path) -> None:
    results = []
    for i, (name, (make, expected)) in enumerate(CASES.items()):
        path = tmp_path / f"case{i}.{'png' if 'PNG' in name else 'jpg'}"
        data = make()
        path.write_bytes(data)
        del data
        result = _measure(path)
        outcome = (
            "decoded" if "decoded" in result else "refused" if "refused" in result else "error"
        )
        held = (
            outcome == expected
            and "above_mb" in result
            and result["above_mb"] < LIMIT_MB
            and (outcome != "refused" or len(result["refused"]) > 20)
        )
        detail = (
            f"{result['above_mb']:7.1f} MB above baseline ({result['baseline_mb']:.0f} MB), "
            f"{result['seconds']:.2f} s, "
            if "above_mb" in result
            else ""
        )
        what = (
            f"decoded to {result['decoded']}"
            if outcome == "decoded"
            else f"refused: {result['refused']!r}"
            if outcome == "refused"
            else result["error"]
        )
        line = (
            f"{'held' if held else 'FAILED'}  {name} ({path.stat().st_size / 1024:,.0f} KB): "
            f"{detail}{what} [expected {expected}]"
        )
        print(line)
        results.append((held, line))
    count = sum(held for held, _ in results)
    summary = f"photo memory: {count} of {len(results)} cases held (limit {LIMIT_MB:.0f} MB)"
    print(summary)
    assert count == len(results), summary + "\n" + "\n".join(line for _, line in results)
