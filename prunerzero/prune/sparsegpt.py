"""SparseGPT (Frantar & Alistarh 2023): OBS weight reconstruction with the inverse-Hessian Cholesky factor.

Same algorithm and defaults as the reference (percdamp 0.01, blocksize 128, adaptive mask per column block),
with one change shared by every method here: each block (or N:M group) prunes exactly the requested count,
ties broken by a stable sort, instead of a ``<=`` threshold that prunes every tied weight.

One OBS sweep (``obs_sweep``) serves two callers:

* ``sparsegpt_prune``: SparseGPT itself; the mask is chosen inside the sweep, block by block, from the weights
  *as already updated* by the earlier columns (score w^2 / U_ii^2, U the upper Cholesky factor of H^-1);
* ``obs_update``: reconstruction after *any* mask (``prune --update obs``): the mask is given (a metric chose
  it) and the sweep only updates the kept weights of each row to minimise the layer's output error
  ||(W - W') X||^2 on the calibration inputs. Given the mask SparseGPT chose, it gives SparseGPT's weights
  (the same arithmetic in the same order).

Dead inputs (diag(H) = 0: the input was zero on every calibration token) have their weights set to 0 in both,
as the reference does; they do not change the layer's output on the calibration data.

``obs_diag`` is the Hessian-aware terminal ``Hd`` = 1 / diag(H_damped^-1), one value per input feature: the OBS
saliency of removing w_ij alone is w_ij^2 / [H^-1]_jj = ``mul(sqr(W), Hd)``, whose ranking key is that of
``mul(abs(W), sqrt(Hd))``: Wanda's form with X replaced by Hd. (For uncorrelated inputs H is diagonal,
H_jj = 2 X_j, and Hd = 2 X + damp: Hd generalises Wanda's X.) SparseGPT's own score differs in two ways a static
metric cannot follow: it reads the weights already updated by the earlier columns, and its denominator
U_jj^2 = [(H_{j:,j:})^-1]_jj is the inverse of the Hessian restricted to the columns not yet processed (equal to
[H^-1]_jj only for the first column). ``mul(sqr(W), Hd)`` with ``--update obs`` therefore approximates
``--metric sparsegpt`` (and ranks per row, where SparseGPT ranks per 128-column block); a fixed mask equal to the
one SparseGPT chose reproduces it exactly.
"""
from __future__ import annotations

import torch

from ..calibration.hessian import PERCDAMP, damped_hessian, hinv_factor, obs_diag
from ..errors import UserError
from .masks import Pattern, mask_from_scores

# the Hessian's derived forms are statistics (``calibration.hessian``); the pruning code imports them from here too
__all__ = ["PERCDAMP", "damped_hessian", "hinv_factor", "obs_diag", "obs_sweep", "sparsegpt_prune", "obs_update"]


@torch.no_grad()
def obs_sweep(weight: torch.Tensor, U: torch.Tensor, dead: torch.Tensor, pattern: Pattern | None = None,
              mask: torch.Tensor | None = None, blocksize: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The OBS sweep over columns; exactly one of ``pattern`` (adaptive selection) or ``mask`` (fixed, True =
    prune). Returns (new fp32 weight, the mask used)."""
    if (pattern is None) == (mask is None):
        raise ValueError("obs_sweep takes a pattern (adaptive selection) or a fixed mask, not both")
    W = weight.detach().float().clone()
    rows, cols = W.shape
    W[:, dead] = 0
    adaptive = pattern is not None
    if adaptive and pattern.is_nm and blocksize % pattern.m:
        raise UserError(f"SparseGPT blocksize {blocksize} must be a multiple of M={pattern.m}")
    if not adaptive:
        mask = mask.to(W.device, torch.bool)
        if mask.shape != W.shape:
            raise UserError(f"mask shape {tuple(mask.shape)} does not match weight {tuple(W.shape)}")
    used = torch.zeros_like(W, dtype=torch.bool) if adaptive else mask

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        if not adaptive:
            mask1 = mask[:, i1:i2]
        elif pattern.is_nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            mask1 = mask_from_scores(W1 ** 2 / d.reshape(1, -1) ** 2, Pattern(sparsity=pattern.sparsity,
                                                                                group="layer"))
        for i in range(i2 - i1):
            w = W1[:, i]
            if adaptive and pattern.is_nm and i % pattern.m == 0:
                score = W1[:, i:i + pattern.m] ** 2 / d[i:i + pattern.m].reshape(1, -1) ** 2
                mask1[:, i:i + pattern.m] = mask_from_scores(score, pattern)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ U1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
        if adaptive:
            used[:, i1:i2] = mask1
    return W, used


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, H: torch.Tensor, pattern: Pattern, percdamp: float = PERCDAMP,
                    blocksize: int = 128, return_mask: bool = False):
    """Return the pruned and reconstructed weight (fp32) given the layer Hessian ``H`` = 2/n X X^T
    (and the mask SparseGPT chose, if ``return_mask``)."""
    U, dead = hinv_factor(H, percdamp)
    W, mask = obs_sweep(weight, U, dead, pattern=pattern, blocksize=blocksize)
    return (W, mask) if return_mask else W


@torch.no_grad()
def obs_update(weight: torch.Tensor, H: torch.Tensor, mask: torch.Tensor, percdamp: float = PERCDAMP,
               blocksize: int = 128) -> torch.Tensor:
    """Prune ``mask`` (True = prune) and update the kept weights by OBS (fp32 result): reconstruction after any
    metric's mask. The blocksize only groups the lazy updates (same result for any blocksize up to rounding)."""
    U, dead = hinv_factor(H, percdamp)
    return obs_sweep(weight, U, dead, mask=mask, blocksize=blocksize)[0]
