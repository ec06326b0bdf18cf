"""Local files written whole: a reader, or a second run, never sees half a file under its final name."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["same_bytes", "write_atomic"]


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write ``data`` beside ``path`` under a hidden name, then rename it into place (atomic on one file system)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    if isinstance(data, str):
        partial.write_text(data)
    else:
        partial.write_bytes(data)
    os.replace(partial, path)
    return path


def same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
