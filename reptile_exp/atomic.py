"""Atomic file writes: write a temporary file beside the target, fsync, rename.

An error midway (a full disk, a kill) leaves whatever was at the target before untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp_path), then atomically rename tmp_path to path; on failure remove tmp_path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def unwritable(folder: Path) -> str | None:
    """Why `folder` cannot be created or written in (the OS's reason), or None: a script's output checked before its
    work, not after."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        return e.strerror or str(e)
    return None


def unwritable_file(path: Path) -> str | None:
    """Why a script cannot write the file `path` (a folder is there, or its folder cannot be created or written in),
    or None; its folder is created: the output checked before the script's work, not after."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder"
    why = unwritable(path.parent)
    return f"{path.parent} cannot be created or written ({why})" if why else None
