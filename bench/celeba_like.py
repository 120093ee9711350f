"""Drawn faces written as a CelebA folder: a stand-in for the real dataset, for loader benchmarks.

``python -m bench.celeba_like DIR --n N [--seed S] [--quality 90] [--workers W]`` writes
``N`` faces of ``SyntheticFaces(N, seed=S)`` into ``DIR/celeba/`` in the official layout of
aligned CelebA (see ``mist_core/data/celeba.py``)::

    DIR/celeba/img_align_celeba/000001.jpg ...   JPEG, 178 wide x 218 high
    DIR/celeba/list_attr_celeba.txt              count, header (40 names), "name a1 ... a40"
    DIR/celeba/identity_CelebA.txt               "name identity" (every face its own identity)
    DIR/celeba/list_bbox_celeba.txt              count, header, "name x_1 y_1 width height"
    DIR/celeba/list_landmarks_align_celeba.txt   count, header, "name 10 ints"
    DIR/celeba/list_eval_partition.txt           "name split", train then valid then test
    DIR/celeba/GENERATED_BY_MIST.txt             marker: drawn faces, N, seed (written last)

The landmarks are the drawn faces' exact ones rounded to the nearest integer (so within
0.5 px); the split follows CelebA's proportions 162,770 / 19,867 / 19,962 of 202,599,
contiguous like the real file. Five attributes follow the drawing (Bangs, Eyeglasses,
Mouth_Slightly_Open, Smiling, Wearing_Hat), the other 35 are -1; the boxes are the face's
landmark box, grown, in the aligned frame (the real ones are in the uncropped photos).

The annotation files cannot have the official MD5s: ``CelebALandmarks`` accepts the folder
because of the marker file. Writing is resumable: JPEGs are renamed into place when complete,
an existing one is kept, and the annotation files are computed from the face parameters
alone (no drawing), so a rerun only draws what is missing; a folder written for another
``N``, seed or quality is refused.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from mist_core.data.celeba import GENERATED_MARKER
from mist_core.data.landmarks import CELEBA_SIZE, LANDMARKS
from mist_core.data.stopping import check_stop
from mist_core.data.synthetic_faces import SyntheticFaces, face_landmarks

__all__ = ["CELEBA_SPLITS", "split_counts", "write_celeba_like"]

#: Images in CelebA's train, valid and test splits.
CELEBA_SPLITS: tuple[int, int, int] = (162_770, 19_867, 19_962)
ATTRIBUTES: tuple[str, ...] = tuple(
    (
        "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips "
        "Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin "
        "Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open "
        "Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
        "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
        "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
    ).split()
)
_LANDMARK_HEADER = (
    "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
    "rightmouth_x rightmouth_y"
)
_PROGRESS_FILE = ".celeba_like.json"  # what is being written, while it is


def split_counts(n: int) -> tuple[int, int, int]:
    """``(train, valid, test)`` sizes of ``n`` images in CelebA's proportions.

    A split of exactly one image is made two (taken from train): torchvision's reader fails
    on a one-image split. ``split_counts(202_599) == CELEBA_SPLITS``.
    """
    total = sum(CELEBA_SPLITS)
    valid = round(n * CELEBA_SPLITS[1] / total)
    test = round(n * CELEBA_SPLITS[2] / total)
    valid, test = (2 if v == 1 else v for v in (valid, test))
    train = n - valid - test
    if train < 2:
        raise ValueError(f"n must be at least 5 (every split 0 or >= 2 images), got {n}")
    return train, valid, test


def _name(index: int) -> str:
    return f"{index + 1:06d}.jpg"


def _attributes(faces: SyntheticFaces, index: int) -> list[int]:
    params = faces.params(index)
    on = {
        "Bangs": params.hair.style == "fringe",
        "Eyeglasses": params.glasses is not None,
        "Mouth_Slightly_Open": params.mouth.opening >= 1.0,
        "Smiling": params.mouth.smile > 1.5,
        "Wearing_Hat": params.occluder is not None and params.occluder.kind == "hat",
    }
    return [1 if on.get(name, False) else -1 for name in ATTRIBUTES]


def _annotations(faces: SyntheticFaces, stop_event: threading.Event | None) -> dict[str, str]:
    """The five annotation files' texts, from the faces' parameters (nothing drawn)."""
    n = len(faces)
    train, valid, _ = split_counts(n)
    attr_rows, bbox_rows, landmark_rows, identity_rows, partition_rows = [], [], [], [], []
    for i in range(n):
        if i % 1024 == 0:
            check_stop(stop_event, "writing the annotations")
        name = _name(i)
        marks = face_landmarks(faces.params(i))
        points = np.rint(np.array([marks[k] for k in LANDMARKS])).astype(int)  # [5, 2]
        attr_rows.append(name + " " + " ".join(f"{a:2d}" for a in _attributes(faces, i)))
        identity_rows.append(f"{name} {i + 1}\n")
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        w, h = x1 - x0, y1 - y0
        box = (x0 - w // 2, y0 - h, 2 * w, 3 * h)
        bbox_rows.append(f"{name} {box[0]:5d} {box[1]:3d} {box[2]:3d} {box[3]:3d}")
        landmark_rows.append(name + " " + "".join(f"{v:5d}" for v in points.reshape(-1)))
        code = 0 if i < train else 1 if i < train + valid else 2
        partition_rows.append(f"{name} {code}\n")
    return {
        # count line, header line (the official one ends with a space), rows
        "list_attr_celeba.txt": "\n".join([str(n), " ".join(ATTRIBUTES) + " ", *attr_rows]) + "\n",
        "identity_CelebA.txt": "".join(identity_rows),
        "list_bbox_celeba.txt": "\n".join([str(n), "image_id x_1 y_1 width height", *bbox_rows])
        + "\n",
        "list_landmarks_align_celeba.txt": "\n".join([str(n), _LANDMARK_HEADER, *landmark_rows])
        + "\n",
        "list_eval_partition.txt": "".join(partition_rows),
    }


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name, then rename: ``path`` is complete or absent."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_celeba_like(
    root: str | Path,
    n: int,
    *,
    seed: int = 0,
    quality: int = 90,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop_event: threading.Event | None = None,
) -> Path:
    """Write ``n`` drawn faces as a CelebA folder ``root/celeba/``; return ``root``.

    Idempotent and resumable (see the module docstring). ``progress(done, n)`` is called
    after each chunk of images; ``workers`` processes draw (default: one per CPU core).

    Raises:
        ValueError: ``n < 5``, or ``root/celeba`` was written for other arguments.
        PreparationStopped: ``stop_event`` was set.
    """
    root = Path(root).expanduser().absolute()
    base = root / "celeba"
    images = base / "img_align_celeba"
    faces = SyntheticFaces(n, seed=seed)
    split_counts(n)  # check n
    what = {"n": n, "seed": seed, "quality": quality, "size": list(CELEBA_SIZE)}
    for name in (_PROGRESS_FILE, GENERATED_MARKER):
        path = base / name
        if path.is_file():
            written = json.loads(path.read_text().split("\n---\n")[-1])
            if written != what:
                raise ValueError(
                    f"{base} holds drawn faces written with {written}, not {what}: choose "
                    "another folder or delete it"
                )
    if (base / GENERATED_MARKER).is_file():
        if progress is not None:
            progress(n, n)
        return root
    if base.exists() and not (base / _PROGRESS_FILE).is_file():
        raise ValueError(f"{base} exists and was not written by bench.celeba_like")
    images.mkdir(parents=True, exist_ok=True)
    _write_file(base / _PROGRESS_FILE, json.dumps(what).encode())

    present = set(os.listdir(images))
    missing = [i for i in range(n) if _name(i) not in present]
    done = n - len(missing)
    if progress is not None:
        progress(done, n)
    todo = iter(missing)
    for drawn, _ in faces.render_chunks(missing, workers=workers, stop_event=stop_event):
        for image in drawn:
            _write_file(images / _name(next(todo)), _jpeg(image, quality))
            done += 1
        if progress is not None:
            progress(done, n)

    for name, text in _annotations(faces, stop_event).items():
        _write_file(base / name, text.encode())
    marker = (
        f"Drawn faces, not CelebA: {n} faces of mist_core's SyntheticFaces(n={n}, "
        f"seed={seed}), JPEG quality {quality}, written by bench.celeba_like in the layout "
        "of aligned CelebA. The annotation files are made up (landmarks: the drawn ones "
        "rounded to integers), so they fail the official MD5 test; CelebALandmarks accepts "
        "this folder because of this file.\n---\n" + json.dumps(what)
    )
    _write_file(base / GENERATED_MARKER, marker.encode())
    (base / _PROGRESS_FILE).unlink(missing_ok=True)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.celeba_like", description=__doc__)
    parser.add_argument("dir", type=Path, help="folder to write celeba/ into")
    parser.add_argument("--n", type=int, required=True, help="number of faces")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--workers", type=int, default=None, help="drawing processes")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - start, 1e-9)
        print(f"\r{done}/{total} faces ({rate:.0f}/s)", end="", file=sys.stderr, flush=True)

    try:
        root = write_celeba_like(
            args.dir,
            args.n,
            seed=args.seed,
            quality=args.quality,
            workers=args.workers,
            progress=progress,
        )
    except ValueError as error:
        parser.error(str(error))
    print(file=sys.stderr)
    print(f"{root / 'celeba'}: {args.n} faces in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
