"""The shapes of run files: the statuses of ``status.json`` and the checks of
``summary.json``, ``status.json`` and ``owner.json`` (each raises :class:`RunFileError`)."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

from mist_core.runs._files import RunFileError


class RunStatus(StrEnum):
    """Where a run is in its life (a ``str``: ``RunStatus.RUNNING == "running"``).

    ``STOPPING``: a stop was asked and the job is finishing its step. ``INTERRUPTED`` is
    derived, never written: the recorded status is queued, running or stopping but no live
    process owns the run (it was killed); such a run can be resumed or deleted.
    """

    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


_ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.STOPPING)


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_time(value: Any) -> bool:
    """A plausible Unix time (seconds): finite, after 1970, before the year 5000."""
    return _is_number(value) and math.isfinite(value) and 0 <= value < 95e9


def _check_summary(data: Any) -> dict:
    """``data`` as a summary: an object whose known keys have their types.

    ``mi``: a list of rows with str ``encoder`` and ``landmark`` (each pair once) and number
    ``mi`` and ``std_error`` (NaN allowed, not infinite); ``steps``/``epochs``: non-negative
    ints; ``train_seconds``: a finite number; ``environment``: an object of strings. Other
    keys are free-form.
    """
    where = "summary.json"
    if not isinstance(data, dict):
        raise RunFileError(f"{where} is {_json_type(data)}, not a JSON object")
    if "mi" in data:
        rows = data["mi"]
        if not isinstance(rows, list):
            raise RunFileError(f"{where}: 'mi' must be a list of rows, got {_json_type(rows)}")
        seen: set[tuple[str, str]] = set()
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise RunFileError(f"{where}: mi[{i}] must be an object, got {_json_type(row)}")
            for key in ("encoder", "landmark"):
                if not isinstance(row.get(key), str):
                    got = _show(row[key]) if key in row else "nothing"
                    raise RunFileError(f"{where}: mi[{i}].{key} must be a string, got {got}")
            for key in ("mi", "std_error"):
                value = row.get(key)
                if not _is_number(value) or math.isinf(value):
                    got = _show(value) if key in row else "nothing"
                    raise RunFileError(
                        f"{where}: mi[{i}].{key} must be a number (NaN allowed), got {got}"
                    )
            pair = (row["encoder"], row["landmark"])
            if pair in seen:
                raise RunFileError(f"{where}: mi has two rows for {pair[0]} and {pair[1]}")
            seen.add(pair)
    for key in ("steps", "epochs"):
        if key in data and not (_is_int(data[key]) and data[key] >= 0):
            raise RunFileError(
                f"{where}: '{key}' must be a non-negative integer, got {_show(data[key])}"
            )
    if "train_seconds" in data:
        value = data["train_seconds"]
        if not _is_number(value) or not math.isfinite(value):
            raise RunFileError(f"{where}: 'train_seconds' must be a number, got {_show(value)}")
    if "environment" in data:
        env = data["environment"]
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise RunFileError(f"{where}: 'environment' must be an object of strings")
    return data


def _check_status(data: Any) -> dict:
    where = "status.json"
    if not isinstance(data, dict) or "status" not in data:
        raise RunFileError(f"{where} is not an object with a 'status' field")
    try:
        RunStatus(data["status"])
    except ValueError:
        raise RunFileError(
            f"{where} has unknown status {_show(data['status'])}; "
            f"valid: {', '.join(s.value for s in RunStatus)}"
        ) from None
    for key in ("message", "traceback"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise RunFileError(f"{where}: '{key}' must be a string, got {_show(data[key])}")
    return data


def _check_owner(data: Any) -> dict:
    where = "owner.json"
    if not isinstance(data, dict):
        raise RunFileError(f"{where} is {_json_type(data)}, not a JSON object")
    if not (_is_int(data.get("pid")) and data["pid"] > 0):
        raise RunFileError(
            f"{where}: 'pid' must be a positive integer, got {_show(data.get('pid'))}"
        )
    if not isinstance(data.get("host"), str):
        raise RunFileError(f"{where}: 'host' must be a string, got {_show(data.get('host'))}")
    for key in ("started", "heartbeat"):
        if not _is_time(data.get(key)):
            raise RunFileError(
                f"{where}: '{key}' must be a time in seconds, got {_show(data.get(key))}"
            )
    return data
