"""Atomic writes: a folder or file appears complete or not at all (nothing half-written on a crash)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def require_empty(target: str | os.PathLike, what: str = "folder") -> None:
    """Refuse an output folder that already holds files (called early, before slow work, and again on write)."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file, not a folder: choose another {what}")
    if target.exists() and any(target.iterdir()):
        raise UserError(f"{target} exists and is not empty: choose another {what}")


@contextmanager
def atomic_folder(target: str | os.PathLike, must_be_empty: bool = True):
    """Yield a temporary folder next to ``target``; on success it is renamed to ``target``."""
    target = Path(target)
    if must_be_empty:
        require_empty(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; give the folder the mode a plain mkdir would
    try:
        yield tmp
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the mode a plain open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
