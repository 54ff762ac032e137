"""SparseGPT (Frantar & Alistarh 2023): OBS weight reconstruction with the inverse-Hessian Cholesky factor.

Same algorithm and defaults as the reference (percdamp 0.01, blocksize 128, adaptive mask per column block),
with one change shared by every method here: each block (or N:M group) prunes exactly the requested count,
ties broken by a stable sort, instead of a ``<=`` threshold that prunes every tied weight.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from .masks import Pattern, mask_from_scores


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, H: torch.Tensor, pattern: Pattern, percdamp: float = 0.01,
                    blocksize: int = 128) -> torch.Tensor:
    """Return the pruned and reconstructed weight (fp32) given the layer Hessian ``H`` = 2/n X X^T."""
    W = weight.detach().float().clone()
    H = H.float().clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(cols, device=W.device)
    H[idx, idx] += damp
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except RuntimeError:
        raise UserError("SparseGPT: the layer Hessian is not positive definite; raise --percdamp") from None
    if pattern.is_nm and blocksize % pattern.m:
        raise UserError(f"SparseGPT blocksize {blocksize} must be a multiple of M={pattern.m}")

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if pattern.is_nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            score = W1 ** 2 / d.reshape(1, -1) ** 2
            mask1 = mask_from_scores(score, Pattern(sparsity=pattern.sparsity, group="layer"))
        for i in range(count):
            w = W1[:, i]
            if pattern.is_nm and i % pattern.m == 0:
                score = W1[:, i:i + pattern.m] ** 2 / d[i:i + pattern.m].reshape(1, -1) ** 2
                mask1[:, i:i + pattern.m] = mask_from_scores(score, pattern)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W
