"""What every benchmark prints and records: the machine line and the README blocks."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

import mist_core

__all__ = ["README", "environment", "write_readme_block"]

README = Path(__file__).resolve().parent / "README.md"


def environment(threads: bool = True) -> str:
    """``x86_64, 2 cores, torch 2.14.1 (2 threads), mist_core 0.1.0, Python 3.11.7``."""
    torch_part = f"torch {torch.__version__}" + (
        f" ({torch.get_num_threads()} threads)" if threads else ""
    )
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {torch_part}, "
        f"mist_core {mist_core.__version__}, Python {platform.python_version()}"
    )


def write_readme_block(name: str, text: str, readme: Path = README) -> None:
    """Put ``text`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in the README,
    replacing what was there (or appending the block when the markers are missing)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = readme.read_text() if readme.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in content:
        pattern = re.escape(begin) + ".*?" + re.escape(end)
        content = re.sub(pattern, lambda _: block, content, flags=re.S)
    else:
        content += f"\n{block}\n"
    readme.write_text(content)
