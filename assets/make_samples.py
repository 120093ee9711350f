"""Draw a grid of sample synthetic faces with their five landmarks marked.

Run from the repository root::

    python -m assets.make_samples            # or: python assets/make_samples.py

It writes ``assets/synthetic_faces_samples.png``. Each landmark is drawn as a coloured ring
with a one-pixel dot at its exact position; a legend names the colours.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mist_core.data.synthetic_faces import LANDMARKS, SyntheticFaces  # noqa: E402

MARKER_COLOURS = {
    "left_eye": (0, 200, 255),
    "right_eye": (0, 90, 255),
    "nose": (255, 230, 0),
    "left_mouth": (0, 230, 80),
    "right_mouth": (255, 0, 200),
}
OUTPUT = Path(__file__).resolve().parent / "synthetic_faces_samples.png"


def make_grid(
    n: int = 8, seed: int = 0, columns: int = 4, zoom: int = 2, start: int = 0
) -> Image.Image:
    """Return a PIL image: ``n`` faces (items ``start`` ... of ``SyntheticFaces(seed=seed)``)."""
    dataset = SyntheticFaces(start + n, seed=seed)
    height, width = dataset.image_size
    cell_w, cell_h = width * zoom, height * zoom
    rows = -(-n // columns)
    legend_h = 28
    grid = Image.new(
        "RGB",
        (columns * cell_w + (columns + 1) * 4, rows * (cell_h + 4) + 4 + legend_h),
        (255, 255, 255),
    )
    font = ImageFont.load_default()
    for k in range(n):
        image, landmarks = dataset.render(start + k)
        face = Image.fromarray(image).resize((cell_w, cell_h), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(face)
        for name in LANDMARKS:
            # Landmark (x, y) in pixels -> zoomed canvas coordinates (same convention).
            x, y = (float(c) * zoom for c in landmarks[name])
            r = 5.0 * zoom  # a ring around the feature, leaving it visible, and a centre dot
            draw.ellipse((x - r, y - r, x + r, y + r), outline=MARKER_COLOURS[name], width=2)
            draw.rectangle((x - 1, y - 1, x, y), fill=MARKER_COLOURS[name])
        draw.text(
            (4, 2),
            f"#{start + k}",
            fill=(255, 255, 255),
            font=font,
            stroke_width=1,
            stroke_fill=(0, 0, 0),
        )
        row, col = divmod(k, columns)
        grid.paste(face, (4 + col * (cell_w + 4), 4 + row * (cell_h + 4)))
    draw = ImageDraw.Draw(grid)
    x, y = 8, rows * (cell_h + 4) + 8
    for name in LANDMARKS:
        draw.ellipse((x, y + 2, x + 12, y + 14), outline=MARKER_COLOURS[name], width=3)
        draw.text((x + 18, y + 2), name, fill=(0, 0, 0), font=font)
        x += 18 + int(draw.textlength(name, font=font)) + 24
    return grid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    make_grid(args.n, args.seed, start=args.start).save(args.output)


if __name__ == "__main__":
    main()
