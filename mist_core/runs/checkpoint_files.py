"""The files of a run's checkpoints: model state as safetensors, optimizer state loaded with
``weights_only=True`` only, a JSON with sizes and sha256s, ``latest.json``; and the checkpoint
half of :class:`~mist_core.runs.Run`. What mist puts in a checkpoint (its ``extra`` keys, old
runs' migrations) is :mod:`mist_core.checkpoints`."""

from __future__ import annotations

import io
import json
import logging
import re
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from mist_core.runs._files import (
    _STALE_TMP_S,
    RunFileError,
    _Dir,
    _json_bytes,
    _json_default,
    _sha256,
)
from mist_core.runs._shapes import _is_int

logger = logging.getLogger("mist_core.runs")  # one logger for the whole package

_META_RE = re.compile(r"step-(\d{8,})\.json")
_STEP_FILE_RE = re.compile(r"step-(\d{8,})\.")
#: Largest checkpoint file (model or optimizer state) read.
MAX_CHECKPOINT_BYTES = 16 * 2**30


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file does not match its recorded hash, or cannot be loaded safely."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: tensors on the CPU, ready for ``load_state_dict``."""

    model_state: dict[str, Tensor] = field(repr=False)
    optimizer_state: dict | None = field(repr=False)
    step: int
    epoch: int
    extra: dict


def _stem(step: int) -> str:
    return f"step-{step:08d}"


def _model_bytes(model_state: Mapping[str, Tensor]) -> bytes:
    tensors = {}
    storages: set[int] = set()
    for key, value in model_state.items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"model_state[{key!r}] is a {type(value).__name__}; only tensors can be "
                "saved (put other values in extra)"
            )
        value = value.detach()
        storage = value.untyped_storage().data_ptr() if value.device.type == "cpu" else None
        if storage is None or storage in storages or not _whole_storage(value):
            # safetensors refuses shared storage (tied weights, views): those get a copy.
            # Tensors that own their CPU storage are written as they are: no copy, and no
            # parallel copy kernel in a background writer thread (see mist_core.jobs).
            value = value.to("cpu", copy=True).contiguous()
        else:
            storages.add(storage)
        tensors[str(key)] = value
    return safetensors.torch.save(tensors)


def _whole_storage(tensor: Tensor) -> bool:
    """Whether ``tensor`` is contiguous and spans its whole storage (no view of a bigger one)."""
    return (
        tensor.is_contiguous()
        and tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    )


def _optimizer_bytes(optimizer_state: Mapping) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(optimizer_state), buffer)
    return buffer.getvalue()


class _RunCheckpoints:
    """The checkpoint half of :class:`~mist_core.runs.Run` (a mixin): saving, pruning, finding,
    loading and verifying checkpoints in ``checkpoints/``. Uses the run's ``name``,
    ``keep_checkpoints``, ``checkpoint_dir`` and ``_dir()``."""

    name: str
    keep_checkpoints: int

    def _checkpoints(self, *, create: bool = False) -> _Dir:
        """``checkpoints/``, opened without following a link (``RunFileError`` if one)."""
        with self._dir() as folder:
            return folder.sub("checkpoints", create=create)

    def save_checkpoint(
        self,
        model_state: Mapping[str, Tensor],
        *,
        step: int,
        epoch: int,
        optimizer_state: Mapping | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write a checkpoint and point ``latest.json`` at it; returns its JSON file.

        Order: model (safetensors), optimizer (``torch.save``), the checkpoint JSON with both
        sizes and sha256s, then ``latest.json`` -- each atomically -- then old checkpoints
        are pruned. A ``checkpoints`` link is refused (``RunFileError``), never written into.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise ValueError(f"epoch must be an int, got {epoch!r}")
        extra = dict(extra or {})
        extra_json = json.loads(json.dumps(extra, default=_json_default))  # fail early
        stem = _stem(step)
        model_name = f"{stem}.safetensors"
        optim_name = f"{stem}.optim.pt" if optimizer_state is not None else None
        with self._checkpoints(create=True) as directory:
            meta_name = f"{stem}.json"
            if self._exists(directory, meta_name):
                # re-saving a step: never leave old metadata over new files
                if self._pointer_step(directory) == step:
                    self._remove(directory, "latest.json")
                directory.unlink(meta_name)
                directory.fsync()

            model_data = _model_bytes(model_state)
            directory.write_atomic(model_name, model_data)
            hashes = {"model": _sha256(model_data), "optimizer": None}
            sizes = {"model": len(model_data), "optimizer": None}
            del model_data
            if optim_name is not None:
                assert optimizer_state is not None
                optim_data = _optimizer_bytes(optimizer_state)
                directory.write_atomic(optim_name, optim_data)
                hashes["optimizer"] = _sha256(optim_data)
                sizes["optimizer"] = len(optim_data)
                del optim_data
            else:
                self._remove(directory, f"{stem}.optim.pt")
            files = {"model": model_name, "optimizer": optim_name}
            meta = {
                "step": step,
                "epoch": epoch,
                "extra": extra_json,
                "files": files,
                "sha256": hashes,
                "bytes": sizes,
                "saved": time.time(),
            }
            directory.write_atomic(meta_name, _json_bytes(meta))
            pointer = {"step": step, "files": {"meta": meta_name, **files}}
            directory.write_atomic("latest.json", _json_bytes(pointer))
            self._prune(directory, keep_step=step)
        return self.checkpoint_dir / meta_name

    @staticmethod
    def _exists(directory: _Dir, name: str) -> bool:
        try:
            directory.lstat(name)
        except FileNotFoundError:
            return False
        return True

    @staticmethod
    def _remove(directory: _Dir, name: str) -> None:
        try:
            directory.unlink(name)
        except FileNotFoundError:
            pass

    def has_checkpoint(self) -> bool:
        """Whether any checkpoint was written (not verified: :meth:`load_checkpoint` does).

        Raises:
            RunFileError: ``checkpoints`` is a link or not a folder.
        """
        return bool(self._checkpoint_steps())

    def latest_checkpoint_step(self) -> int | None:
        """The step of the latest checkpoint (as ``latest.json`` says, else the newest file);
        ``None`` without one. Cheap: nothing is loaded or verified.

        Raises:
            RunFileError: ``checkpoints`` is a link or not a folder.
        """
        try:
            directory = self._checkpoints()
        except FileNotFoundError:
            return None
        with directory:
            step = self._pointer_step(directory)
            if step is not None:
                return step
            steps = self._steps_in(directory)
        return steps[-1] if steps else None

    def checkpoint_problem(self) -> str | None:
        """What is wrong with ``checkpoints/`` or its ``latest.json`` (cheap, nothing is
        verified), or ``None``. Loading falls back to the newest checkpoint that verifies."""
        try:
            directory = self._checkpoints()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            return str(error)
        with directory:
            try:
                self._pointer_step(directory, strict=True)
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as error:
                return f"{error} (loading falls back to the newest checkpoint that verifies)"
        return None

    def load_checkpoint(self, which: str | int = "latest") -> Checkpoint:
        """Load and verify a checkpoint: ``"latest"`` or a step number.

        Raises:
            CorruptCheckpointError: a file does not match its size or sha256, is not a valid
                safetensors file, needs unsafe unpickling, or cannot be read safely (a link,
                not a regular file, over :data:`MAX_CHECKPOINT_BYTES`); or ``checkpoints`` is
                a link.
            FileNotFoundError: there is no such checkpoint (or none loads).
        """
        if isinstance(which, str) and which != "latest":
            if not which.isdigit():
                raise ValueError(f"which must be 'latest' or a step number, got {which!r}")
            which = int(which)
        if not (which == "latest" or (isinstance(which, int) and not isinstance(which, bool))):
            raise ValueError(f"which must be 'latest' or a step number, got {which!r}")
        try:
            directory = self._checkpoints()
        except FileNotFoundError:
            raise FileNotFoundError(f"no checkpoint in {self.checkpoint_dir}") from None
        except RunFileError as error:
            raise CorruptCheckpointError(f"run {self.name!r}: {error}") from error
        with directory:
            if isinstance(which, int):
                return self._load_step(directory, which)
            step = self._pointer_step(directory)
            if step is not None:
                return self._load_step(directory, step)
            # latest.json missing or unusable: the newest checkpoint that verifies
            failures = []
            for step in sorted(self._steps_in(directory), reverse=True):
                try:
                    checkpoint = self._load_step(directory, step)
                except (CorruptCheckpointError, FileNotFoundError) as error:
                    logger.warning("skipping checkpoint %d of run %s: %s", step, self.name, error)
                    failures.append(f"step {step}: {error}")
                    continue
                logger.warning(
                    "run %s: latest.json missing or invalid; using checkpoint of step %d",
                    self.name,
                    step,
                )
                return checkpoint
        detail = f" that loads ({'; '.join(failures)})" if failures else ""
        raise FileNotFoundError(f"no checkpoint in {self.checkpoint_dir}{detail}")

    def _pointer_step(self, directory: _Dir, *, strict: bool = False) -> int | None:
        """The step ``latest.json`` points to when it is valid and its JSON exists; else
        ``None`` with a warning, or with ``strict`` the error (FileNotFoundError: none)."""
        try:
            data = directory.read_json("latest.json")
            step = data.get("step") if isinstance(data, dict) else None
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise RunFileError("checkpoints/latest.json has no valid step")
            try:
                info = directory.lstat(f"{_stem(step)}.json")
            except FileNotFoundError:
                info = None
            if info is None or not stat.S_ISREG(info.st_mode):
                raise RunFileError(
                    f"checkpoints/latest.json points to checkpoint {step}, which is missing"
                )
        except FileNotFoundError:
            if strict:
                raise
            return None
        except (OSError, ValueError) as error:
            if strict:
                raise
            logger.warning("run %s: ignoring latest.json: %s", self.name, error)
            return None
        return step

    def _checkpoint_steps(self) -> list[int]:
        try:
            directory = self._checkpoints()
        except FileNotFoundError:
            return []
        with directory:
            return self._steps_in(directory)

    @staticmethod
    def _steps_in(directory: _Dir) -> list[int]:
        return sorted(int(m.group(1)) for n in directory.listdir() if (m := _META_RE.fullmatch(n)))

    def _load_step(self, directory: _Dir, step: int) -> Checkpoint:
        stem = _stem(step)
        meta_name = f"{stem}.json"
        meta_path = self.checkpoint_dir / meta_name
        try:
            meta = directory.read_json(meta_name)
        except FileNotFoundError:
            raise FileNotFoundError(f"no checkpoint of step {step} in {directory.path}") from None
        except ValueError as error:
            raise CorruptCheckpointError(f"run {self.name!r}: {error}") from error
        self._check_meta(meta, step, meta_path)

        model_name = meta["files"]["model"]
        model_data = self._verified_bytes(directory, meta, "model")
        try:
            model_state = safetensors.torch.load(model_data)
        except Exception as error:  # noqa: BLE001 - any parse failure is corruption
            raise CorruptCheckpointError(
                f"{directory.path / model_name} is not a valid safetensors file: {error}"
            ) from error
        del model_data

        optimizer_state = None
        if meta["files"]["optimizer"] is not None:
            optim_path = directory.path / meta["files"]["optimizer"]
            optim_data = self._verified_bytes(directory, meta, "optimizer")
            try:
                optimizer_state = torch.load(
                    io.BytesIO(optim_data), map_location="cpu", weights_only=True
                )
            except Exception as error:  # noqa: BLE001 - UnpicklingError and anything else
                raise CorruptCheckpointError(
                    f"refusing to load {optim_path}: it is not a plain tensor/optimizer "
                    f"state (weights_only unpickling failed: {error})"
                ) from error
            if not isinstance(optimizer_state, dict):
                raise CorruptCheckpointError(
                    f"{optim_path} holds a {type(optimizer_state).__name__}, not a state dict"
                )
        return Checkpoint(
            model_state=model_state,
            optimizer_state=optimizer_state,
            step=step,
            epoch=meta["epoch"],
            extra=meta["extra"],
        )

    @staticmethod
    def _check_meta(meta: Any, step: int, meta_path: Path) -> None:
        """The JSON names exactly this step's files: a model is never read from a pickle."""
        stem = _stem(step)
        try:
            files, hashes = meta["files"], meta["sha256"]
            sizes = meta.get("bytes")
            ok = (
                meta["step"] == step
                and isinstance(meta["epoch"], int)
                and not isinstance(meta["epoch"], bool)
                and isinstance(meta["extra"], dict)
                and files["model"] == f"{stem}.safetensors"
                and files["optimizer"] in (None, f"{stem}.optim.pt")
                and isinstance(hashes["model"], str)
                and (files["optimizer"] is None or isinstance(hashes["optimizer"], str))
                and (
                    sizes is None
                    or (
                        isinstance(sizes, dict)
                        and all(
                            sizes.get(k) is None or (_is_int(sizes[k]) and sizes[k] >= 0)
                            for k in ("model", "optimizer")
                        )
                    )
                )
            )
        except (TypeError, KeyError, AttributeError):
            ok = False
        if not ok:
            raise CorruptCheckpointError(
                f"{meta_path} is not a valid checkpoint description for step {step} "
                f"(expects files {stem}.safetensors and optionally {stem}.optim.pt)"
            )

    @staticmethod
    def _verified_bytes(directory: _Dir, meta: dict, kind: str) -> bytes:
        name = meta["files"][kind]
        path = directory.path / name
        expected_size = (meta.get("bytes") or {}).get(kind)
        try:
            if expected_size is not None:
                info = directory.lstat(name)
                if stat.S_ISREG(info.st_mode) and info.st_size != expected_size:
                    raise CorruptCheckpointError(
                        f"{path} is {info.st_size} bytes, its checkpoint says {expected_size} "
                        "(truncated or replaced)"
                    )
            data = directory.read(name, MAX_CHECKPOINT_BYTES)
        except FileNotFoundError:
            raise CorruptCheckpointError(f"{path} is missing") from None
        except RunFileError as error:
            raise CorruptCheckpointError(f"{path}: {error}") from error
        if _sha256(data) != meta["sha256"][kind]:
            raise CorruptCheckpointError(f"{path} does not match its sha256 (corrupt file)")
        return data

    def _prune(self, directory: _Dir, keep_step: int) -> None:
        """Delete all but the newest checkpoints (and leftovers of killed writers). Works in
        the opened folder: a link is removed itself, nothing is deleted through one."""
        steps = self._steps_in(directory)
        keep = set(steps[-self.keep_checkpoints :]) | {keep_step}
        pointer = self._pointer_step(directory)
        if pointer is not None:
            keep.add(pointer)
        now = time.time()
        names = directory.listdir()
        # JSON first: a half-deleted checkpoint is then never taken for a valid one
        names.sort(key=lambda n: not n.endswith(".json"))
        for name in names:
            match = _STEP_FILE_RE.match(name)
            try:
                if match and int(match.group(1)) not in keep:
                    if stat.S_ISDIR(directory.lstat(name).st_mode):
                        logger.warning("not deleting folder %s", directory.path / name)
                        continue
                    directory.unlink(name)
                elif name.startswith(".") and name.endswith(".tmp"):
                    if now - directory.lstat(name).st_mtime > _STALE_TMP_S:
                        directory.unlink(name)
            except FileNotFoundError:
                pass
            except OSError as error:
                logger.warning("could not delete %s: %s", directory.path / name, error)
