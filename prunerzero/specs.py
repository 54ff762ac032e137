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

SPARSEGPT = "sparsegpt"
UPDATES = ("none", "obs", "lsq", "admm")
ALLOCATIONS = ("uniform", "owl")
GROUPS = ("row", "layer")
OWL_LAMBDA, OWL_M = 0.08, 5.0      # OWL's published defaults
PERCDAMP = 0.01                    # SparseGPT's

# The messages of the rules, one each (tests feed the same bad combination through the CLI, a grid and a space).
ALLOCATION_NM = ("a layer-wise sparsity allocation (allocation owl) applies to unstructured sparsity only: an N:M "
                 "pattern fixes every group of M weights; use an unstructured sparsity, or the uniform allocation")
PERMUTE_UNSTRUCTURED = ("permute (input-channel permutation) applies to N:M patterns only: use a pattern such as "
                        "2:4, or drop permute")
PERMUTE_ADMM = ("permute does not go with update admm (ADMM re-selects the mask while it updates the weights): use "
                "update none, obs or lsq with permute")
SPARSEGPT_PROCEDURE = ("sparsegpt already reconstructs (OBS) and has no metric to permute by: drop update/permute, "
                       "or use a metric with update obs")
PERCDAMP_NO_HESSIAN = ("percdamp damps the Hessian of sparsegpt or of an update: add update obs (or lsq, admm), "
                       "or drop percdamp")
OWL_WITHOUT_OWL = "owl_lambda/owl_m set the OWL allocation: add allocation owl, or drop them"
GROUP_NM = "group applies to unstructured sparsity only: drop it with an N:M pattern"
GROUP_SPARSEGPT = ("group does not apply to sparsegpt (it selects within blocks of 128 columns of the whole layer): "
                   "drop group")


class ProcedureError(UserError):
    """Options that do not go together (each command may say which of its options were given)."""


def sparsity_nm(sparsity: float, pattern: Pattern) -> str:
    return (f"sparsity {sparsity:g} does not apply to the N:M pattern {pattern.n}:{pattern.m} (it prunes "
            f"{pattern.n} of every {pattern.m}): drop one of the two")


def check_procedure(metric: str | None, pattern: Pattern, update: str = "none", allocation: str = "uniform",
                    permute: bool = False, percdamp: float | None = None, owl_lambda: float | None = None,
                    owl_m: float | None = None, sparsity: float | None = None, group: str | None = None) -> None:
    """Refuse options that do not go together. ``metric`` None is "some formula" (a search's candidates); the
    optional values are None where they were not given (a default is never a conflict)."""
    if update not in UPDATES:
        raise ProcedureError(f"unknown update '{update}': use none, obs, lsq or admm")
    if allocation not in ALLOCATIONS:
        raise ProcedureError(f"unknown allocation '{allocation}': use {' or '.join(ALLOCATIONS)}")
    if group is not None and group not in GROUPS:
        raise ProcedureError(f"unknown comparison group '{group}': use row or layer")
    if owl_lambda is not None and not (math.isfinite(owl_lambda) and 0.0 < owl_lambda < 0.5):
        raise ProcedureError(f"owl_lambda {owl_lambda:g} is outside (0, 0.5): OWL spreads block sparsities over "
                        "2*lambda, e.g. 0.08")
    if owl_m is not None and not (math.isfinite(owl_m) and owl_m > 0):
        raise ProcedureError(f"owl_m {owl_m:g} must be > 0: an outlier is a score above M x the block mean, e.g. 5")
    if percdamp is not None and not (math.isfinite(percdamp) and percdamp > 0):
        raise ProcedureError(f"percdamp {percdamp:g} must be > 0: a fraction of the mean of diag(H), e.g. 0.01")
    if metric == SPARSEGPT and (update != "none" or permute):
        raise ProcedureError(SPARSEGPT_PROCEDURE)
    if percdamp is not None and metric != SPARSEGPT and update == "none":
        raise ProcedureError(PERCDAMP_NO_HESSIAN)
    if (owl_lambda is not None or owl_m is not None) and allocation != "owl":
        raise ProcedureError(OWL_WITHOUT_OWL)
    if pattern.is_nm:
        if sparsity is not None and sparsity != pattern.sparsity:
            raise ProcedureError(sparsity_nm(sparsity, pattern))
        if group is not None:
            raise ProcedureError(GROUP_NM)
        if allocation != "uniform":
            raise ProcedureError(ALLOCATION_NM)
        if permute and update == "admm":
            raise ProcedureError(PERMUTE_ADMM)
        return
    if group is not None and metric == SPARSEGPT:
        raise ProcedureError(GROUP_SPARSEGPT)
    if permute:
        raise ProcedureError(PERMUTE_UNSTRUCTURED)


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
