"""The pruning choices (updates, allocations, comparison groups) and the rules for options that go together.

``check_procedure`` is the one place those rules live: ``specs.PruneSpec`` (CLI), grids and search spaces call it
through ``specs``, and ``prune.run.prune_model`` applies it to direct library calls too. The messages name the
settings by their plain names (``allocation``, ``permute``, ``update``, ...), the CLI's flags and the grids' and
spaces' keys alike.
"""
from __future__ import annotations

import math

from ..calibration.hessian import PERCDAMP   # SparseGPT's damping, one constant
from ..errors import UserError
from .masks import Pattern

__all__ = ["SPARSEGPT", "UPDATES", "ALLOCATIONS", "GROUPS", "OWL_LAMBDA", "OWL_M", "PERCDAMP", "ProcedureError",
           "check_procedure", "sparsity_nm"]

SPARSEGPT = "sparsegpt"
UPDATES = ("none", "obs", "lsq", "admm")
ALLOCATIONS = ("uniform", "owl")
GROUPS = ("row", "layer")
OWL_LAMBDA, OWL_M = 0.08, 5.0      # OWL's published defaults

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
