"""What a prune does, as one validated, frozen specification, and the one place where options that go together are
checked.

``PruneSpec`` is built once per command from the CLI's flags (``prunerzero prune``), per method and pattern from a
grid (``results/grid.py``), and per fitness setting from a search space (``search/space.py``): the same bad
combination gives the same message through all three, because all three call ``check_procedure``. The messages
name the settings by their plain names (``allocation``, ``permute``, ``update``, ...), which are the CLI's
``--allocation``/``--permute``/``--update`` and the grids' and spaces' keys alike.

Destinations (``probe_folder``, ``probe_file``) are created and written to once, before any model loads, so a
finished result is never lost because its destination was bad.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .prune.masks import Pattern, parse_pattern
from .prune.rules import (ALLOCATION_NM, ALLOCATIONS, GROUP_NM, GROUP_SPARSEGPT, GROUPS, OWL_LAMBDA, OWL_M,
                          OWL_WITHOUT_OWL, PERCDAMP, PERCDAMP_NO_HESSIAN, PERMUTE_ADMM, PERMUTE_UNSTRUCTURED, SPARSEGPT,
                          SPARSEGPT_PROCEDURE, UPDATES, ProcedureError, check_procedure, sparsity_nm)

__all__ = ["ALLOCATION_NM", "ALLOCATIONS", "GROUP_NM", "GROUP_SPARSEGPT", "GROUPS", "OWL_LAMBDA", "OWL_M",
           "OWL_WITHOUT_OWL", "PERCDAMP", "PERCDAMP_NO_HESSIAN", "PERMUTE_ADMM", "PERMUTE_UNSTRUCTURED", "SPARSEGPT",
           "SPARSEGPT_PROCEDURE", "UPDATES", "ProcedureError", "check_procedure", "sparsity_nm", "PruneSpec",
           "check_grid_method", "probe_folder", "probe_file"]

# the choices and the rules for options that go together live with the pruning code (prune/rules.py), which applies
# them itself too; this module builds the specifications on them


@dataclass(frozen=True)
class PruneSpec:
    """One prune: the metric (a name, canonical formula text, or 'sparsegpt'), the pattern, and the procedure.

    ``metric_source`` is what the user passed when it was not the metric itself (a search run folder whose
    selection gave the formula)."""

    metric: str
    pattern: Pattern
    update: str = "none"
    allocation: str = "uniform"
    owl_lambda: float = OWL_LAMBDA
    owl_m: float = OWL_M
    permute: bool = False
    percdamp: float = PERCDAMP
    sequential: bool = True
    metric_source: str | None = None

    def __post_init__(self):
        check_procedure(self.metric, self.pattern, self.update, self.allocation, self.permute)

    @classmethod
    def build(cls, metric: str, sparsity: float | None = None, pattern: str | None = None,
              group: str | None = None, update: str = "none", allocation: str = "uniform",
              owl_lambda: float | None = None, owl_m: float | None = None, permute: bool = False,
              percdamp: float | None = None, sequential: bool = True) -> "PruneSpec":
        """From options as given (None = not given): every rule checked, the metric resolved (names, formulas in
        prefix or infix form, a search run's selection), then the defaults filled in."""
        from .metric.known import NAMED_METRICS, resolve_metric

        if sparsity is not None and not (math.isfinite(sparsity) and 0.0 < sparsity < 1.0):
            raise UserError(f"sparsity {sparsity:g} is outside (0, 1): use e.g. 0.5")
        nm = pattern not in (None, "", "unstructured")
        shape = parse_pattern(0.5, pattern) if nm else None
        source = None
        if metric == SPARSEGPT:
            name, default_group = SPARSEGPT, "row"
        else:
            name, node, default_group = resolve_metric(metric)
            if metric not in NAMED_METRICS and str(node) != metric:
                source = metric if Path(metric).exists() else None
            name = metric if metric in NAMED_METRICS else str(node)
        if shape is None:
            shape = Pattern(sparsity=0.5 if sparsity is None else sparsity, group=default_group)
        check_procedure(name, shape, update, allocation, permute, percdamp, owl_lambda, owl_m, sparsity, group)
        if not nm and group is not None:
            shape = Pattern(sparsity=shape.sparsity, group=group)
        return cls(name, shape, update, allocation, OWL_LAMBDA if owl_lambda is None else owl_lambda,
                   OWL_M if owl_m is None else owl_m, permute, PERCDAMP if percdamp is None else percdamp,
                   sequential, source)

    @property
    def uses_hessian(self) -> bool:
        return self.metric == SPARSEGPT or self.update != "none"


def check_grid_method(name: str, spec: str, patterns, update: str, allocation: str, permute: bool,
                      percdamp: float | None, where: str) -> None:
    """A grid's pruning method against the grid's patterns: every cell it runs is a valid spec, and it runs at
    least one (a method whose procedure fits none of the patterns is refused with the rule it breaks)."""
    def check(p: str) -> None:
        pat = parse_pattern(0.5, p) if ":" in p else Pattern(sparsity=float(p))
        try:
            check_procedure(spec, pat, update, allocation, permute, percdamp)
        except UserError as e:
            raise UserError(f"{where} ({name}) at pattern {p}: {e}") from None

    runs = [p for p in patterns if not ((allocation != "uniform" and ":" in p) or (permute and ":" not in p))]
    for p in runs or list(patterns)[:1]:
        check(p)


# --------------------------------------------------------------------------------------------- destinations
def _probe_dir(folder: Path, what: str, given) -> None:
    """Create ``folder`` (and its parents), write and remove a tiny file in it, and remove the folders this made
    (the command's own writer makes them again): nothing is left behind by a command refused later. Errors name
    ``given``."""
    made = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.remove(tmp)
        for p in made:   # deepest first
            p.rmdir()
    except OSError as e:
        raise UserError(f"{what} {given}: {folder} cannot be written to ({e.strerror or e}): choose a place you "
                        "can write to") from None


def probe_folder(path: str | os.PathLike | None, what: str, must_be_empty: bool = False) -> None:
    """An output or cache folder: not a file, (optionally) empty, and writable: created now if absent. A result
    folder that must appear whole (``--save``) is probed in its parent and written atomically later."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder: name a folder")
    if must_be_empty:
        if p.is_dir() and any(p.iterdir()):
            raise UserError(f"{what} {path} exists and is not empty: choose another folder")
        _probe_dir(p.parent if not p.exists() else p, what, path)
        return
    _probe_dir(p, what, path)


def probe_file(path: str | os.PathLike | None, what: str) -> None:
    """An output file: not a folder, and its folder writable (created now if absent)."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {path} is a folder: name a file such as {str(path).rstrip('/')}/results.json")
    _probe_dir(p.parent, what, path)
