"""The real (aligned and cropped) CelebA dataset, read with torchvision, as items in seed form.

Every item is ``{"image": [3, 218, 178] float32 in [0, 1], "left_eye": [2], "right_eye": [2],
"nose": [2], "left_mouth": [2], "right_mouth": [2]}``, the landmarks being float32 ``(x, y)``
pixel coordinates exactly as written in ``list_landmarks_align_celeba.txt`` (``x`` to the
right, ``y`` downward; "left" is the image-left, i.e. the person's right).

On-disk layout
--------------
``torchvision.datasets.CelebA(root)`` reads ``<root>/celeba/`` (the folder name is fixed)::

    <root>/celeba/img_align_celeba/000001.jpg ... 202599.jpg   (178 wide x 218 high JPEGs)
    <root>/celeba/list_attr_celeba.txt           count line, header line, "name  a1 ... a40"
    <root>/celeba/identity_CelebA.txt            no header, "name identity"
    <root>/celeba/list_bbox_celeba.txt           count line, header line, "name x y w h"
    <root>/celeba/list_landmarks_align_celeba.txt  count line, header line, "name 10 ints"
    <root>/celeba/list_eval_partition.txt        no header, "name split" (0/1/2)

Things to know about torchvision's reader
-----------------------------------------
* It MD5-checks the five annotation files on every construction (not the images), so an
  edited or truncated annotation file is rejected; it only checks that ``img_align_celeba/``
  is a folder, so missing JPEGs surface when an item is read (we name the file then).
* It parses all five annotation files (about 30 MB of text) on every construction, whatever
  ``target_type`` is: build one dataset per split and reuse it.
* It joins the annotation files by *row position*, not by file name: every file must list the
  images in the same order as ``list_eval_partition.txt`` (the official files do).
* A split with exactly one image makes it fail (``TypeError: iteration over a 0-d tensor``);
  this only matters for hand-made subsets.

Generated folders
-----------------
A folder written by ``bench.celeba_like`` (drawn faces in this layout, for benchmarks) holds
a marker file ``celeba/GENERATED_BY_MIST.txt`` (``GENERATED_MARKER``). Its annotation files
cannot have the official MD5s, so for such a folder only, torchvision's reader runs with its
integrity test reduced to "every expected file is there" (a private subclass of
``torchvision.datasets.CelebA``, nothing patched globally) and an info line is logged; the
files are then parsed by torchvision exactly as real ones. A folder without the marker gets
the full MD5 test as before.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Final

import torch
from PIL import Image
from torch.utils.data import Dataset

from mist_core.data.landmarks import CELEBA_HEIGHT, CELEBA_WIDTH, LANDMARKS

if TYPE_CHECKING:
    from torchvision.datasets import CelebA

__all__ = [
    "GENERATED_MARKER",
    "CelebALandmarks",
    "CelebAMissingError",
    "LANDMARKS",
    "expected_files",
    "file_md5",
    "is_generated",
]

logger = logging.getLogger(__name__)

SPLITS: Final[tuple[str, ...]] = ("train", "valid", "test", "all")

_BASE_FOLDER: Final[str] = "celeba"  # fixed by torchvision.datasets.CelebA.base_folder
_IMAGE_FOLDER: Final[str] = "img_align_celeba"
#: In ``<root>/celeba/``: marks a folder of generated (drawn) faces, whose annotation files
#: are not the official ones (see "Generated folders" above).
GENERATED_MARKER: Final[str] = "GENERATED_BY_MIST.txt"
_ANNOTATION_FILES: Final[tuple[str, ...]] = (
    "list_attr_celeba.txt",
    "identity_CelebA.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
    "list_eval_partition.txt",
)
_DESCRIPTIONS: Final[dict[str, str]] = {
    _IMAGE_FOLDER: "folder of 202,599 aligned 178x218 JPEGs 000001.jpg ... 202599.jpg",
    "list_attr_celeba.txt": "40 binary attributes per image",
    "identity_CelebA.txt": "identity of each image",
    "list_bbox_celeba.txt": "face boxes in the uncropped images",
    "list_landmarks_align_celeba.txt": "5 landmarks per aligned image",
    "list_eval_partition.txt": "train/valid/test split of each image",
}
_WHERE_TO_GET: Final[str] = (
    "Where to get them: the official CelebA page "
    "(https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) links to the authors' Google Drive: "
    "'Img/img_align_celeba.zip' (unzip it so that its img_align_celeba/ folder lands in "
    "<root>/celeba/), 'Anno/' (list_attr_celeba.txt, identity_CelebA.txt, "
    "list_bbox_celeba.txt, list_landmarks_align_celeba.txt) and 'Eval/' "
    "(list_eval_partition.txt). Alternatively, on a machine with internet run "
    "`torchvision.datasets.CelebA(root, download=True)` (needs the `gdown` package; Google "
    "Drive's download quota is often exceeded, then retry later) and copy the resulting "
    "celeba/ folder here."
)


class CelebAMissingError(FileNotFoundError):
    """CelebA is absent, incomplete or corrupted under the given root.

    ``missing`` lists the expected paths that do not exist (empty when the files exist but
    fail torchvision's checksum test).
    """

    def __init__(self, message: str, missing: tuple[Path, ...] = ()) -> None:
        super().__init__(message)
        self.missing: tuple[Path, ...] = tuple(missing)

    def __str__(self) -> str:
        return str(self.args[0])


def _resolve_root(root: str | Path) -> Path:
    """The folder that contains ``celeba/``, accepting the ``celeba/`` folder itself too."""
    path = Path(root).expanduser().absolute()
    if not (path / _BASE_FOLDER).is_dir() and path.name == _BASE_FOLDER and path.is_dir():
        return path.parent
    return path


def expected_files(root: str | Path) -> list[Path]:
    """Absolute paths torchvision needs: ``img_align_celeba/`` then the five annotation files.

    ``root`` is the folder containing ``celeba/`` (or the ``celeba/`` folder itself).
    """
    base = _resolve_root(root) / _BASE_FOLDER
    return [base / _IMAGE_FOLDER, *(base / name for name in _ANNOTATION_FILES)]


def _is_present(path: Path) -> bool:
    return path.is_dir() if path.name == _IMAGE_FOLDER else path.is_file()


def is_generated(root: str | Path) -> bool:
    """Whether ``<root>/celeba/`` holds generated faces (its ``GENERATED_MARKER`` file)."""
    return (_resolve_root(root) / _BASE_FOLDER / GENERATED_MARKER).is_file()


@functools.cache
def _generated_celeba() -> type[CelebA]:
    """``torchvision.datasets.CelebA`` whose integrity test asks only that every expected
    file exists (no MD5): used for generated folders only."""
    from torchvision.datasets import CelebA

    class GeneratedCelebA(CelebA):
        def _check_integrity(self) -> bool:
            return all(_is_present(path) for path in expected_files(self.root))

    return GeneratedCelebA


def _missing_message(root: Path, given: Path, missing: list[Path]) -> str:
    """The error text for missing files: every expected path, flagged, plus hints."""
    base = root / _BASE_FOLDER
    lines = [
        f"CelebA is missing or incomplete: {len(missing)} of {len(_ANNOTATION_FILES) + 1} "
        f"expected entries not found in {base}/ "
        "(torchvision.datasets.CelebA reads <root>/celeba/; "
        f"root = {root}). Expected:",
    ]
    for path in expected_files(root):
        flag = "MISSING" if path in missing else "found  "
        shown = f"{path}/" if path.name == _IMAGE_FOLDER else str(path)
        lines.append(f"  {flag} {shown}  ({_DESCRIPTIONS[path.name]})")
    if (base / f"{_IMAGE_FOLDER}.zip").is_file() and not (base / _IMAGE_FOLDER).is_dir():
        lines.append(
            f"Hint: {base / (_IMAGE_FOLDER + '.zip')} exists but is not extracted; unzip it "
            f"in {base}/."
        )
    for folder in dict.fromkeys((given, root)):
        direct = [name for name in (_IMAGE_FOLDER, *_ANNOTATION_FILES) if (folder / name).exists()]
        if direct and folder.name != _BASE_FOLDER:
            lines.append(
                f"Hint: found {', '.join(direct)} directly in {folder}/; torchvision needs "
                f"them in a folder named exactly '{_BASE_FOLDER}': rename or move them to "
                f"{folder / _BASE_FOLDER}/ (or rename {folder.name}/ to {_BASE_FOLDER}/)."
            )
    lines.append(_WHERE_TO_GET)
    return "\n".join(lines)


def file_md5(path: Path) -> str:
    """The MD5 hex digest of a file, read a MiB at a time."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_message(root: Path) -> str:
    """The error text for annotation files that exist but fail torchvision's MD5 test."""
    base = root / _BASE_FOLDER
    bad = []
    from torchvision.datasets import CelebA

    for _, md5, name in CelebA.file_list:
        path = base / name
        if path.suffix in (".zip", ".7z") or not path.is_file():
            continue  # torchvision does not check the archives either
        actual = file_md5(path)
        if actual != md5:
            bad.append(f"  {path}: md5 {actual}, official {md5}")
    details = "\n".join(bad) if bad else "  (could not tell which file: all match now)"
    return (
        f"CelebA files exist under {base}/ but do not match the official checksums that "
        "torchvision.datasets.CelebA verifies (corrupted or truncated download, an edited or "
        "re-saved annotation file, or a different CelebA release?):\n"
        f"{details}\n"
        "Replace the listed files with the official ones. " + _WHERE_TO_GET
    )


def _pil_to_rgb_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image (any mode) -> float32 ``[3, H, W]`` in [0, 1]; closes the image file."""
    from torchvision.transforms.functional import pil_to_tensor

    try:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return pil_to_tensor(rgb).to(torch.float32).div_(255.0)
    finally:
        image.close()


class CelebALandmarks(Dataset[dict[str, torch.Tensor]]):
    """Aligned CelebA with its five landmarks, read by ``torchvision.datasets.CelebA``.

    Args:
        root: the folder that contains ``celeba/`` (torchvision's convention); the ``celeba/``
            folder itself is accepted too.
        split: one of ``"train"`` (162,770 images), ``"valid"`` (19,867), ``"test"`` (19,962)
            or ``"all"`` (202,599).

    Items are dicts: ``"image"`` float32 ``[3, 218, 178]`` in [0, 1] (RGB; grayscale or other
    modes are converted) and, for each name in ``LANDMARKS``, a float32 ``[2]`` tensor
    ``(x, y)`` in pixels as in ``list_landmarks_align_celeba.txt``.

    Raises:
        ValueError: ``split`` is not one of ``SPLITS``.
        CelebAMissingError: files or folders are missing (checked before torchvision runs), or
            the annotation files fail torchvision's MD5 test (skipped for a generated
            folder, see the module docstring).
    """

    def __init__(self, root: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}; got {split!r}")
        given = Path(root).expanduser().absolute()
        self.root: Path = _resolve_root(root)
        self.split: str = split
        missing = [path for path in expected_files(self.root) if not _is_present(path)]
        if missing:
            raise CelebAMissingError(
                _missing_message(self.root, given, missing), missing=tuple(missing)
            )
        # torchvision is imported here, not at module level: it takes seconds to import, and
        # importing this module should stay cheap for users of the synthetic data only.
        from torchvision.datasets import CelebA

        #: a folder of drawn faces written by ``bench.celeba_like`` (no MD5 test)
        self.generated: bool = is_generated(self.root)
        reader = CelebA
        if self.generated:
            logger.info(
                "%s is a generated folder of drawn faces (%s): its annotation files are not "
                "MD5-checked",
                self.root / _BASE_FOLDER,
                GENERATED_MARKER,
            )
            reader = _generated_celeba()
        try:
            self._celeba: CelebA = reader(
                str(self.root),
                split=split,
                target_type="landmarks",
                transform=_pil_to_rgb_tensor,
                download=False,
            )
        except RuntimeError as err:
            if not str(err).startswith("Dataset not found or corrupted"):
                raise
            raise CelebAMissingError(_checksum_message(self.root)) from err
        landmarks = self._celeba.landmarks_align.to(torch.float32)
        self._landmarks: torch.Tensor = landmarks.reshape(-1, len(LANDMARKS), 2)

    @property
    def image_folder(self) -> Path:
        """``<root>/celeba/img_align_celeba``."""
        return self.root / _BASE_FOLDER / _IMAGE_FOLDER

    @property
    def filenames(self) -> list[str]:
        """Image file names of the split, in item order (``N`` strings like ``000001.jpg``)."""
        return list(self._celeba.filename)

    @property
    def landmarks(self) -> torch.Tensor:
        """All landmarks of the split: float32 ``[N, 5, 2]``, ``(x, y)`` in ``LANDMARKS`` order.

        Read from the annotation file only (no image is loaded); a copy.
        """
        return self._landmarks.clone()

    def __len__(self) -> int:
        return len(self._celeba)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path = self.image_folder / self._celeba.filename[index]
        if not path.is_file():
            nested = self.image_folder / _IMAGE_FOLDER
            hint = (
                f" ({nested}/ exists: the zip was extracted one level too deep?)"
                if nested.is_dir()
                else " (img_align_celeba/ is incomplete: re-extract img_align_celeba.zip)"
            )
            raise FileNotFoundError(
                errno.ENOENT,
                f"CelebA image {path.name} of split {self.split!r} is listed in "
                f"list_eval_partition.txt but missing{hint}",
                str(path),
            )
        image, target = self._celeba[index]
        if tuple(image.shape) != (3, CELEBA_HEIGHT, CELEBA_WIDTH):
            raise ValueError(
                f"CelebA image {path} is {image.shape[2]}x{image.shape[1]} (width x height); "
                f"aligned CelebA images are {CELEBA_WIDTH}x{CELEBA_HEIGHT}, so the landmarks "
                "would not match it"
            )
        # Fresh [2] tensors (not views of the [N, 5, 2] table), so DataLoader workers do not
        # move the whole table to shared memory with every item.
        points = target.to(torch.float32).reshape(len(LANDMARKS), 2)
        item = {"image": image}
        for name, point in zip(LANDMARKS, points, strict=True):
            item[name] = point.clone()
        return item

    def __repr__(self) -> str:
        return f"CelebALandmarks(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
