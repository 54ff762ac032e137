"""What the layer Hessian H = 2/n X X^T gives once it is accumulated (``activations.InputStats``): its damped form,
the upper Cholesky factor of its inverse (SparseGPT's OBS sweep) and the Hessian-aware terminal Hd.

They depend on a layer's inputs only, never on a mask, so they are statistics: the calibration computes them (the
search's Hd terminal, the reserved factor terms) and ``prune.sparsegpt`` / ``prune.admm`` use them.
"""
from __future__ import annotations

import torch

from ..errors import UserError

PERCDAMP = 0.01  # the reference's damping: percdamp x the mean of diag(H) added to the diagonal


def damped_hessian(H: torch.Tensor, percdamp: float = PERCDAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """(H + percdamp * mean(diag H) * I with dead inputs set to 1 on the diagonal, dead-input mask), in fp32."""
    H = H.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(H.shape[0], device=H.device)
    H[idx, idx] += damp
    return H, dead


def _cholesky(H: torch.Tensor) -> torch.Tensor:
    try:
        return torch.linalg.cholesky(H)
    except RuntimeError:
        raise UserError("the layer Hessian is not positive definite: raise percdamp (e.g. 0.1)") from None


def hinv_factor(H: torch.Tensor, percdamp: float = PERCDAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead): U the upper Cholesky factor of the damped H^-1 (H^-1 = U^T U), as SparseGPT uses it.

    U depends on the layer's inputs only, not on the mask: a caller pruning the same layer with many masks
    (a search) can compute it once.
    """
    Hd, dead = damped_hessian(H, percdamp)
    U = torch.linalg.cholesky(torch.cholesky_inverse(_cholesky(Hd)), upper=True)
    return U, dead


def obs_diag(H: torch.Tensor, percdamp: float = PERCDAMP) -> torch.Tensor:
    """The terminal Hd: 1 / diag(H_damped^-1), shape [1, in] (dead inputs: 1 / [H^-1]_jj of their damped 1)."""
    Hd, _ = damped_hessian(H, percdamp)
    inv = torch.cholesky_inverse(_cholesky(Hd.double()))
    return (1.0 / torch.diag(inv)).float().view(1, -1)
