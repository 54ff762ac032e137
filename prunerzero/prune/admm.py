"""Least-squares reconstruction after any mask (``--update lsq``) and ADMM pruning with a gradual mask chosen by
the metric itself (``--update admm``, after Boža 2024, "Fast and Effective Weight Update for Pruned Large
Language Models").

Both minimise what SparseGPT's OBS update minimises, the layer's output error on the calibration inputs
tr((W' - W) H (W' - W)^T), W' zero where the mask prunes; they differ from it in how far they get.

* OBS with a fixed mask (``sparsegpt.obs_update``) removes the pruned weights column by column and compensates
  only in the columns to the right, so its result is not the optimum for that mask.
* ``lsq_update`` solves the problem for the mask exactly: per row, the kept weights S satisfy the normal
  equations A_SS w'_S = (w A)_S. All rows are solved at once by conjugate gradients restricted to each row's
  kept weights, so the cost is a few dense (rows x in) @ (in x in) products per iteration.
* ``admm_prune`` also lets the weights choose the mask: ADMM alternates a ridge solve that pulls the weights
  towards the layer's output (V), a projection onto the mask (Z) and a dual step (U). For the first ``ramp``
  iterations the mask is re-selected by the metric evaluated on the current weights (V + U), at a sparsity that
  rises on a cubic schedule to the target, so weights that the update has made important are kept. The final
  mask then gets the exact ``lsq_update``. With Wanda's metric this is Boža's ADMM-Grad; with any other formula
  the formula decides, on weights that are already compensating.

Everything runs in the input-normalised basis (w_j * sqrt(H_jj), H_ij / sqrt(H_ii H_jj)), where the Hessian has a
unit diagonal: conjugate gradients are Jacobi-preconditioned for free, and one ``rho`` and one damping fraction
suit every layer. ``percdamp`` adds percdamp * I there (SparseGPT adds percdamp * mean(diag H) in the original
basis; both are a small ridge). Dead inputs (H_jj = 0) get weight 0, as in SparseGPT.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UserError
from .allocation import mask_with_count
from .masks import Pattern, lowest_k, mask_from_scores
from .sparsegpt import PERCDAMP

ADMM_RHO = 1.0
ADMM_ITERS = 30
ADMM_RAMP = 20
CG_ITERS = 100
CG_TOL = 1e-5


@dataclass
class Normalised:
    """A layer's Hessian in the input-normalised basis, which depends on the inputs only, not on the mask: a caller
    pruning one layer with many masks (a search, a benchmark) computes it once (``normalise``)."""

    A: torch.Tensor                  # damped normalised Hessian, unit diagonal + percdamp (dead inputs: percdamp)
    d: torch.Tensor                  # sqrt(diag H), 1 for dead inputs
    dead: torch.Tensor               # inputs that were zero on every calibration token
    inv: torch.Tensor | None = None  # (A + rho I)^-1, ADMM's ridge solve
    rho: float | None = None

    def weights(self, weight: torch.Tensor) -> torch.Tensor:
        """The weights in this basis (W * d), dead inputs zeroed, fp32."""
        W = weight.detach().to(self.d.device, torch.float32).clone()
        W[:, self.dead] = 0
        return W * self.d.view(1, -1)


def normalise(H: torch.Tensor, percdamp: float = PERCDAMP, rho: float | None = None) -> Normalised:
    """``Normalised`` for a layer Hessian; with ``rho``, also the inverse ADMM needs."""
    H = H.to(torch.float32)
    diag = torch.diag(H)
    dead = diag <= 0
    d = torch.where(dead, torch.ones_like(diag), diag.clamp_min(0).sqrt())
    A = H / d.view(-1, 1) / d.view(1, -1)
    A[dead, :] = 0
    A[:, dead] = 0
    idx = torch.arange(A.shape[0], device=A.device)
    A[idx, idx] = torch.where(dead, torch.zeros_like(diag), torch.ones_like(diag)) + percdamp
    inv = None
    if rho is not None:
        Ar = A.clone()
        Ar[idx, idx] += rho
        try:
            inv = torch.cholesky_inverse(torch.linalg.cholesky(Ar))
        except RuntimeError:
            raise UserError("the layer Hessian is not positive definite: raise percdamp (e.g. 0.1)") from None
    return Normalised(A, d, dead, inv, rho)


@torch.no_grad()
def masked_cg(Wn: torch.Tensor, A: torch.Tensor, keep: torch.Tensor, x0: torch.Tensor | None = None,
              iters: int = CG_ITERS, tol: float = CG_TOL) -> torch.Tensor:
    """Per row, argmin_x (x - w) A (x - w)^T with x zero outside ``keep``: conjugate gradients on all rows at once,
    until every row's residual is below ``tol`` of its right-hand side (or ``iters``)."""
    keep = keep.to(Wn.dtype)
    b = (Wn @ A) * keep
    x = (Wn if x0 is None else x0) * keep
    r = b - (x @ A) * keep
    p = r.clone()
    rs = (r * r).sum(1, keepdim=True)
    stop = (tol * tol) * (b * b).sum(1, keepdim=True)
    for _ in range(iters):
        live = rs > stop
        if not bool(live.any()):
            break
        Ap = (p @ A) * keep
        pAp = (p * Ap).sum(1, keepdim=True)
        alpha = torch.where(live & (pAp > 0), rs / pAp.clamp_min(torch.finfo(pAp.dtype).tiny),
                            torch.zeros_like(rs))
        x.add_(alpha * p)
        r.sub_(alpha * Ap)
        rs_new = (r * r).sum(1, keepdim=True)
        beta = torch.where(live, rs_new / rs.clamp_min(torch.finfo(rs.dtype).tiny), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    return x


@torch.no_grad()
def lsq_update(weight: torch.Tensor, H: torch.Tensor | None, mask: torch.Tensor, percdamp: float = PERCDAMP,
               iters: int = CG_ITERS, norm: Normalised | None = None) -> torch.Tensor:
    """Prune ``mask`` (True = prune) and give the kept weights of each row their least-squares values against the
    layer Hessian ``H`` (or its precomputed ``norm``); fp32 result."""
    mask = mask.to(weight.device, torch.bool)
    if mask.shape != weight.shape:
        raise UserError(f"mask shape {tuple(mask.shape)} does not match weight {tuple(weight.shape)}")
    norm = norm or normalise(H.to(weight.device), percdamp)
    x = masked_cg(norm.weights(weight), norm.A, ~mask, iters=iters)
    return x / norm.d.view(1, -1)


def ramp_mask(score: torch.Tensor, pattern: Pattern, count: int | None, frac: float) -> torch.Tensor:
    """The mask at ``frac`` (0..1] of the way to the final one: the lowest ``frac`` share of the final prune count
    of each group (``count`` per row/layer if an allocation gave one). For N:M the candidates are the N lowest of
    every group of M and the share is taken among them, so ``frac`` = 1 is exactly the N:M mask."""
    if pattern.is_nm:
        cand = mask_from_scores(score, pattern)
        if frac >= 1:
            return cand
        k = round(frac * score.shape[1] * pattern.n / pattern.m)
        return lowest_k(score.masked_fill(~cand, float("inf")), k)
    final = count if count is not None else (int(score.shape[1] * pattern.sparsity) if pattern.group == "row"
                                             else int(score.numel() * pattern.sparsity))
    return mask_with_count(score, pattern, final if frac >= 1 else round(frac * final))


@torch.no_grad()
def admm_prune(weight: torch.Tensor, H: torch.Tensor | None, pattern: Pattern,
               score_of: Callable[[torch.Tensor], torch.Tensor], count: int | None = None, percdamp: float = PERCDAMP,
               rho: float = ADMM_RHO, iters: int = ADMM_ITERS, ramp: int = ADMM_RAMP, cg_iters: int = CG_ITERS,
               norm: Normalised | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ADMM pruning with gradual mask selection by ``score_of(weights) -> scores`` (the metric on the current
    weights, original basis). ``norm``: the precomputed ``normalise(H, percdamp, rho)``. Returns (fp32 weight,
    mask with True = pruned)."""
    if not 1 <= ramp <= iters:
        raise UserError(f"ADMM needs 1 <= ramp ({ramp}) <= iterations ({iters})")
    if norm is None or norm.inv is None or norm.rho != rho:
        norm = normalise(H.to(weight.device), percdamp, rho)
    Wn, d = norm.weights(weight), norm.d.view(1, -1)
    AW = Wn @ norm.A
    V, U = Wn, torch.zeros_like(Wn)
    mask = None
    for t in range(iters):
        if t < ramp:
            frac = 1.0 - (1.0 - (t + 1) / ramp) ** 3
            mask = ramp_mask(score_of((V + U) / d), pattern, count, frac)
        Z = (V + U).masked_fill(mask, 0)
        U = U + V - Z
        V = (AW + rho * (Z - U)) @ norm.inv
    x = masked_cg(Wn, norm.A, ~mask, x0=(V + U).masked_fill(mask, 0), iters=cg_iters)
    return x / d, mask
