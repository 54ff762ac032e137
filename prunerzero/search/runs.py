"""A search run's folder: its files, its evaluation log, its state and its recorded space.

``RunFiles`` names the files; ``read_evaluations`` reads the log (one JSON record per evaluation); ``run_state``
says whether a folder holds a run; ``load_run_space`` rebuilds the recorded, validated search space.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import UserError
from .genes import join_candidate
from .space import SearchSpace, validate


@dataclass
class RunFiles:
    root: Path

    @property
    def evaluations(self) -> Path:
        return self.root / "evaluations.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.json"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def references(self) -> Path:
        return self.root / "references.json"


RECORD_KEYS = ("generation", "formula", "simplified", "latex", "key", "size", "depth", "ppl", "hit")


def candidate_of(rec: dict) -> str:
    """The candidate a record is about: its formula, with `` @ <allocation>`` when the gene is not uniform."""
    return join_candidate(rec["formula"], rec.get("allocation"))


def read_evaluations(root: str | Path, quiet: bool = False) -> list[dict]:
    """The run's log, one record per line. A torn *last* line (the run was killed mid-write) is dropped with a
    note; any other unreadable line is refused with its line number."""
    path = RunFiles(Path(root)).evaluations
    if not path.is_file():
        raise UserError(f"{root} holds no evaluations.jsonl: pass a search run directory")
    lines = path.read_text().split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or any(k not in rec for k in RECORD_KEYS) \
                    or not isinstance(rec["ppl"], (int, float)) or not isinstance(rec["generation"], int):
                raise ValueError("not an evaluation record")
        except ValueError:
            if i == len(lines):
                if not quiet:
                    tqdm.write(f"note: dropped the torn last line {i} of {path} (the run stopped mid-write)",
                               file=sys.stderr)
                break
            raise UserError(f"{path} line {i} is not an evaluation record: the log is corrupt; "
                            "restore it from a copy or start a new run") from None
        out.append(rec)
    return out


def run_state(root: str | Path) -> str:
    """'empty' (no run here), 'unstarted' (settings written, no checkpoint yet) or 'checkpointed'."""
    files = RunFiles(Path(root))
    if files.checkpoint.is_file():
        return "checkpointed"
    has_log = files.evaluations.is_file() and files.evaluations.stat().st_size > 0
    return "unstarted" if files.config.is_file() or has_log else "empty"


def load_run_space(run_dir: str | Path) -> tuple[SearchSpace, dict]:
    files = RunFiles(Path(run_dir))
    if not files.config.is_file():
        raise UserError(f"{run_dir} has no config.json: pass a search run directory")
    try:
        cfg = json.loads(files.config.read_text())
        raw, meta = cfg["space"], cfg.get("meta", {})
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{files.config} is not a run's settings file: restore it, or start a new run") from None
    return validate(raw, str(files.config)), meta
