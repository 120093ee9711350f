"""What this machine has for a training: the memory a process could still use, and its CPU
cores. Read from Linux's ``/proc`` and the cgroup files (containers limit memory there, not in
``MemAvailable``); imports nothing from mist_core, so decoding and estimates can both use it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["available_memory_bytes", "cpu_cores"]


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) -> None


def _cgroup_room() -> int | None:
    """Memory left under this process's cgroup limits (v2 and v1), the tightest one."""
    rooms: list[int] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2: check this group and every parent
            folder = Path("/sys/fs/cgroup") / path.lstrip("/")
            root = Path("/sys/fs/cgroup")
            while True:
                limit = _read_int(folder / "memory.max")
                used = _read_int(folder / "memory.current")
                if limit is not None and used is not None:
                    rooms.append(max(0, limit - used))
                if folder == root or root not in folder.parents:
                    break
                folder = folder.parent
        elif "memory" in controllers.split(","):  # cgroup v1
            for folder in (Path("/sys/fs/cgroup/memory") / path.lstrip("/"),
                           Path("/sys/fs/cgroup/memory")):  # fmt: skip
                limit = _read_int(folder / "memory.limit_in_bytes")
                used = _read_int(folder / "memory.usage_in_bytes")
                if limit is not None and used is not None and limit < 2**60:
                    rooms.append(max(0, limit - used))
                    break
    return min(rooms) if rooms else None


def available_memory_bytes() -> int | None:
    """Memory this process could still use: Linux's MemAvailable, or the room left under
    the cgroup's limit where that is less. ``None`` where neither can be read."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    room = _cgroup_room()
    if room is not None:
        found.append(room)
    return min(found) if found else None


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask; all cores where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
