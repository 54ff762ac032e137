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
def atomic_folder(target: str | os.PathLike, must_be_empty: bool = True, shared_cache: bool = False):
    """Yield a temporary folder next to ``target``; on success it is renamed to ``target``.

    ``shared_cache``: ``target`` is a cache entry that another process may complete at the same time (two runners
    sharing a cache); if a non-empty ``target`` is there when this one finishes, it is kept and this copy dropped.
    """
    target = Path(target)
    if must_be_empty and not shared_cache:
        require_empty(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; give the folder the mode a plain mkdir would
    try:
        yield tmp
        if shared_cache and _holds_files(target):
            return
        try:
            if target.exists():
                target.rmdir()
            os.replace(tmp, target)
        except OSError:
            if not (shared_cache and _holds_files(target)):  # lost the race to another writer: keep its copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary file path next to ``path`` to write; when the block ends without an error the file is
    synced to disk, given the mode a plain open() would, and renamed to ``path`` (readers see the old file or the
    whole new one); on an error (or Ctrl-C) it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    done = False
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
        done = True
    finally:
        if not done and os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
