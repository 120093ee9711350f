"""The samples ``python -m mist_core estimate`` reads: x and y from one ``.npz`` file or two
``.npy`` files, checked, with errors that say what to write instead."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["load_samples"]


def _load_array(path: Path, what: str) -> np.ndarray:
    """The array of a ``.npy`` file (``what`` names it in errors)."""
    if not path.is_file():
        raise ValueError(f"{what}: no such file {str(path)!r}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # not .npy, or an array of objects
        raise ValueError(
            f"{path} is not a .npy file of numbers (numpy.save writes one)"
        ) from error
    if not isinstance(array, np.ndarray):  # np.load opened an archive: close it
        array.close()
        raise ValueError(f"{path} is a .npz archive: give it alone (estimate {path})")
    return array


def _load_npz(path: Path, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x_name`` and ``y_name`` of a ``.npz`` file."""
    if not path.is_file():
        raise ValueError(f"no such file {str(path)!r}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .npz file (numpy.savez(file, x=x, y=y) writes one)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            for name in (x_name, y_name):
                if name not in names:
                    found = ", ".join(names) if names else "none"
                    raise KeyError(
                        f"{path} has no array named {name!r} (its arrays: {found}); name "
                        "them with --x NAME --y NAME"
                    )
            return archive[x_name], archive[y_name]
    except KeyError as error:
        raise ValueError(error.args[0]) from error
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable .npz file ({error})") from error


def load_samples(
    paths: Sequence[str | Path], x_name: str | None = None, y_name: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """x and y as float32 arrays ``[N]`` or ``[N, D]``: from one ``.npz`` file (its arrays
    ``x_name`` and ``y_name``, default ``x`` and ``y``) or from two ``.npy`` files. Raises
    ``ValueError`` with what to do when the files cannot give them."""
    files = [Path(f).expanduser() for f in paths]
    if len(files) == 1:
        if files[0].suffix == ".npy":
            raise ValueError(
                f"{files[0]} is one .npy file: give a .npz holding x and y, or two .npy "
                "files (estimate X.npy Y.npy)"
            )
        x, y = _load_npz(files[0], x_name or "x", y_name or "y")
        names = (x_name or "x", y_name or "y")
    elif len(files) == 2:
        if x_name or y_name:
            raise ValueError("--x and --y name the arrays of one .npz file, not of two .npy files")
        x, y = _load_array(files[0], "x"), _load_array(files[1], "y")
        names = (str(files[0]), str(files[1]))
    else:
        raise ValueError(f"estimate takes one .npz file or two .npy files, got {len(files)} files")
    for name, array in zip(names, (x, y), strict=True):
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{name} holds {array.dtype} values: x and y must be numbers")
        if array.ndim not in (1, 2):
            raise ValueError(
                f"{name} has shape {array.shape}: x and y must be (N,) or (N, D) arrays"
            )
    if len(x) != len(y):
        raise ValueError(
            f"x and y must hold the same number of samples (rows), got {len(x)} and {len(y)}"
        )
    return x.astype(np.float32), y.astype(np.float32)
