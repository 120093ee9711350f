"""Files of a run: folders opened without following links, reads with size limits, atomic
writes with one mode, JSON in and out."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

__all__ = ["MAX_JSON_BYTES", "RunFileError", "write_atomic"]

#: Temporary files older than this (seconds) in checkpoints/ are leftovers of killed writers.
_STALE_TMP_S = 60.0

#: Largest JSON file of a run that is read (config, status, summary, owner, checkpoint JSON).
MAX_JSON_BYTES = 16 * 2**20

_FILE_MODE = 0o644
_DIR_MODE = 0o755

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as a run file never blocks
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FD = {os.open, os.stat, os.unlink, os.rename, os.mkdir} <= os.supports_dir_fd


class RunFileError(ValueError):
    """A run file that cannot be used: a symlink, not a regular file, larger than its limit,
    not UTF-8, not valid JSON or not of the expected shape. The message starts with the file's
    path inside the run (``"summary.json: ..."``)."""


# --- modes ---------------------------------------------------------------------------------


def _umask() -> int:
    """The process's umask, read without changing it where the system says it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """The one mode of every file a run writes: 0644 less the umask."""
    return _FILE_MODE & ~_umask()


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# --- folders opened without following links ------------------------------------------------


class _Dir:
    """An open folder of a run. Its files are opened relative to it with ``O_NOFOLLOW``, so
    a symbolic link planted as a run file (or as ``checkpoints/``) is refused, never followed;
    only regular files are read, each up to a size limit.

    ``label`` is the folder's path inside the run (``""`` or ``"checkpoints/"``), for messages.
    Without ``dir_fd`` support (Windows) paths are checked with ``lstat`` before use instead.
    """

    def __init__(self, path: Path, fd: int | None, label: str) -> None:
        self.path = path
        self.fd = fd
        self.label = label

    @classmethod
    def open(cls, path: str | Path, label: str = "") -> _Dir:
        """The folder ``path`` itself (the run's folder: a link to it is the store's business)."""
        path = Path(path)
        if not _DIR_FD:
            if not path.is_dir():
                raise FileNotFoundError(f"{path} is not a folder")
            return cls(path, None, label)
        try:
            fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} does not exist") from None
        except NotADirectoryError:
            raise FileNotFoundError(f"{path} is not a folder") from None
        return cls(path, fd, label)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> _Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refuse(self, name: str, error: OSError, *, folder: bool = False) -> Exception:
        """The error to raise for ``name`` that could not be opened as it should."""
        where = f"{self.label}{name}"
        try:
            info = self.lstat(name)
        except OSError:
            info = None
        if isinstance(error, FileNotFoundError) or error.errno == errno.ENOENT:
            return FileNotFoundError(
                errno.ENOENT, f"{where} does not exist", str(self.path / name)
            )
        if info is not None and stat.S_ISLNK(info.st_mode):
            return RunFileError(
                f"{where}{'/' if folder else ''} is a symbolic link; run files are never read "
                "or written through links (replace it by the real file or folder)"
            )
        if info is not None and folder and not stat.S_ISDIR(info.st_mode):
            return RunFileError(f"{where} is not a folder")
        if info is not None and not folder and stat.S_ISDIR(info.st_mode):
            return RunFileError(f"{where} is a folder, not a file")
        return error

    def lstat(self, name: str) -> os.stat_result:
        if self.fd is None:
            return os.lstat(self.path / name)
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def sub(self, name: str, *, create: bool = False) -> _Dir:
        """The subfolder ``name``, refused when it is a link or not a folder."""
        label = f"{self.label}{name}/"
        if create:
            try:
                if self.fd is None:
                    os.mkdir(self.path / name, _DIR_MODE)
                else:
                    os.mkdir(name, _DIR_MODE, dir_fd=self.fd)
            except FileExistsError:
                pass
        if self.fd is None:
            info = os.lstat(self.path / name)  # FileNotFoundError passes through
            if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
                raise self._refuse(name, NotADirectoryError(name), folder=True)
            return _Dir(self.path / name, None, label)
        try:
            fd = os.open(
                name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=self.fd
            )
        except OSError as error:
            raise self._refuse(name, error, folder=True) from None
        return _Dir(self.path / name, fd, label)

    def open_file(self, name: str, flags: int, mode: int = _FILE_MODE) -> int:
        """A file descriptor of ``name`` (never through a link); the caller closes it."""
        flags |= _O_NOFOLLOW | _O_CLOEXEC
        try:
            if self.fd is None:
                if os.path.islink(self.path / name):
                    raise OSError(errno.ELOOP, "symbolic link", str(self.path / name))
                return os.open(self.path / name, flags, mode)
            return os.open(name, flags, mode, dir_fd=self.fd)
        except OSError as error:
            raise self._refuse(name, error) from None

    def read(self, name: str, limit: int) -> bytes:
        """The bytes of the regular file ``name``; :class:`RunFileError` when it is larger
        than ``limit`` (checked before reading), a link, a folder or another kind of file."""
        fd = self.open_file(name, os.O_RDONLY | _O_NONBLOCK)
        try:
            info = os.fstat(fd)
            self._check_regular(name, info)
            self._check_size(name, info.st_size, limit)
            parts, total = [], 0
            while True:  # st_size bytes, in one read for anything under 2 GB
                chunk = os.read(fd, max(info.st_size - total, 0) or 1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                self._check_size(name, total, limit)  # it grows while we read: still capped
                parts.append(chunk)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    def _check_regular(self, name: str, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise RunFileError(f"{self.label}{name} is {kind}, not a file that can be read")

    def _check_size(self, name: str, size: int, limit: int) -> None:
        if size > limit:
            raise RunFileError(
                f"{self.label}{name} is {_size(size)} ({size:,} bytes), over the limit of "
                f"{limit:,} bytes for such a file; it is not read (a damaged or foreign file?)"
            )

    def read_json(self, name: str, limit: int = MAX_JSON_BYTES) -> Any:
        return _parse_json(self.read(name, limit), f"{self.label}{name}")

    def tail(self, name: str, size: int) -> bytes:
        """The last ``size`` bytes of the regular file ``name``, whatever its length."""
        fd = self.open_file(name, os.O_RDONLY | _O_NONBLOCK)
        try:
            info = os.fstat(fd)
            self._check_regular(name, info)
            os.lseek(fd, max(0, info.st_size - size), os.SEEK_SET)
            return os.read(fd, size)
        finally:
            os.close(fd)

    def write_atomic(self, name: str, data: bytes, *, durable: bool = True) -> None:
        """Replace ``name`` by ``data``: a temporary file in this folder (mode 0644 less the
        umask), fsync, rename. A reader (or a process restarted after a kill) sees either the
        old file or the new one, never a mix; the folder is fsynced so the rename survives a
        power cut. The rename replaces a link named ``name``, never what it points to."""
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        fd = self.open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.fchmod(fd, _file_mode())
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self.fd is None:
                os.replace(self.path / tmp, self.path / name)
            else:
                os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            try:
                self.unlink(tmp)
            except OSError:
                pass
            raise
        if durable:
            self.fsync()

    def fsync(self) -> None:
        """Make renames in this folder durable, where the platform allows it."""
        if self.fd is None:
            _fsync_dir(self.path)
            return
        try:
            os.fsync(self.fd)
        except OSError:
            pass

    def unlink(self, name: str) -> None:
        """Remove ``name`` (a link is removed itself, never what it points to)."""
        if self.fd is None:
            os.unlink(self.path / name)
        else:
            os.unlink(name, dir_fd=self.fd)

    def listdir(self) -> list[str]:
        return os.listdir(self.path if self.fd is None else self.fd)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the file ``path`` by ``data`` so that a reader, or a process restarted after a
    kill or a power cut, sees the old content or the new one, never a mix: a temporary file in
    the same folder (mode 0644 less the umask), fsync, rename over ``path``, fsync the folder.
    A link named ``path`` is replaced, never written through; the folder must exist."""
    path = Path(path)
    with _Dir.open(path.parent) as folder:
        folder.write_atomic(path.name, data)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable, where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows, or a filesystem that refuses to open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parse_json(data: bytes, where: str) -> Any:
    """The JSON in ``data``; :class:`RunFileError` naming ``where`` when it is not."""
    if not data.strip():
        raise RunFileError(f"{where} is empty (a write that never finished?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RunFileError(
            f"{where} is not UTF-8 text (byte {error.start}: {error.reason}); a damaged file?"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RunFileError(
            f"{where} is not valid JSON ({error.msg} at line {error.lineno} column "
            f"{error.colno}); a truncated or damaged file?"
        ) from None
    except (ValueError, RecursionError) as error:  # 5000-digit numbers, [[[[...]]]]
        raise RunFileError(f"{where} cannot be read as JSON ({error})") from None


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays, 0-d tensors and paths in summaries and extras."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, tensors
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, default=_json_default) + "\n").encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
