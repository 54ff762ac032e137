"""Rows: one JSON object per line in ``<out>/rows.jsonl``, appended and synced as each cell (or measurement)
finishes, so a killed run keeps every finished row; claims let several runners share one grid and one rows file.

Every cell of a grid is one row with one schema: the protocol, the method, its formula and ranking key, the pattern,
the measured sparsity, perplexity per dataset, seconds, and provenance (git commit and whether the tree was dirty,
library versions, device, the exact command). Rows already present are skipped, so a stopped run resumes by running
the same command.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from ..fsutil import atomic_write_text
from ..provenance import provenance

# ------------------------------------------------------------------------------------------------ rows
def read_rows(path: str | Path) -> list[dict]:
    """Rows of a ``rows.jsonl``; a torn last line (killed mid-write) is dropped with a note."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "id" not in row:
                raise ValueError
        except ValueError:
            if i == len(lines):
                print(f"note: dropped the torn last line {i} of {path}", file=sys.stderr)
                break
            raise UserError(f"{path} line {i} is not a row: restore the file or remove that line") from None
        rows.append(row)
    return rows


def _append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def claim(rows_path: Path, cell_id: str):
    """Yield True when this process may run ``cell_id``: no row holds it yet and no other live runner has claimed
    it. Several ``prunerzero bench`` processes can thus share one grid and one rows file (one per GPU, say): each
    cell is run once. A claim is a file under ``<out>/.claims/`` holding host and pid; one left by a runner that
    died (same host, pid gone) is taken over, and every claim is removed when its cell ends."""
    folder = rows_path.parent / ".claims"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / hashlib.sha1(cell_id.encode()).hexdigest()
    if not _take_claim(path):
        yield False
        return
    try:
        yield cell_id not in {r["id"] for r in read_rows(rows_path)}  # another runner may have finished it
    finally:
        path.unlink(missing_ok=True)


def _take_claim(path: Path) -> bool:
    """Create the claim file ``path`` (host and pid); one left by a runner that died on this host is taken over."""
    host = socket.gethostname()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner, pid = path.read_text().split()
            except (OSError, ValueError):  # being written or removed just now: leave it to its owner
                return False
            if owner != host or _alive(int(pid)):
                return False
            path.unlink(missing_ok=True)   # a runner that died holding it
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{host} {os.getpid()}")
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True



# ------------------------------------------------------------------------------------------------ measurements
# Timing benchmarks (benchmarks/*.py --out OUT) keep one row per measurement in OUT/rows.jsonl, the prose that goes
# with them in OUT/meta.json (whose "renderer" names the benchmarks/ script that renders it), and render OUT.md from
# both (``--render-only`` re-renders without measuring).

def measurement(row_id: str, fields: dict, device=None, command: str | None = None) -> dict:
    """One measurement as a row: its id, its fields, and provenance (commit, versions, device, command, time)."""
    return {"id": row_id, **fields, "provenance": provenance(device, command)}


def record(out: str | Path, row: dict) -> None:
    """Append a measurement to ``out/rows.jsonl`` (synced: a killed run keeps every finished row)."""
    _append_row(Path(out) / "rows.jsonl", row)


def read_meta(out: str | Path) -> dict:
    path = Path(out) / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not JSON: restore it from git or delete it") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} must hold a JSON object")
    return meta


def write_meta(out: str | Path, meta: dict) -> None:
    atomic_write_text(Path(out) / "meta.json", json.dumps(meta, indent=1, ensure_ascii=False) + "\n")

