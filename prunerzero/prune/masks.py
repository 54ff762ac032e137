"""Masks from per-weight scores: per output row (Wanda), per layer (magnitude in Wanda's repo), N:M.

A mask is a bool tensor shaped like the weight; True marks a weight to prune (the lowest scores).

Exact counts and ties: every comparison group loses exactly ``int(group_size * sparsity)`` weights (N for N:M).
Ties are broken as by a stable sort, so among equal scores the weight with the lower index (input column; flat
index for per-layer groups) is pruned first; the k-th-value and pairwise-rank selections below give that same
mask. That order has one answer, so CPU and GPU give the same mask.
This matters on quantised checkpoints such as SmolLM2-Q4_1, where many weights tie exactly. (Wanda's
unstructured path uses the same stable sort; its N:M path uses ``torch.topk``, whose tie order is unspecified.)
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import UserError


class MetricError(UserError):
    """A metric produced scores that cannot rank weights (NaN/Inf, wrong shape)."""


@dataclass(frozen=True)
class Pattern:
    """What to prune: ``sparsity`` of each ``group`` ("row" or "layer"), or N of every M consecutive inputs."""

    sparsity: float = 0.5
    group: str = "row"
    n: int = 0
    m: int = 0

    def __post_init__(self):
        if self.m:
            if not (1 <= self.n < self.m):
                raise UserError(f"N:M pattern {self.n}:{self.m} needs 1 <= N < M: use e.g. 2:4 or 4:8")
            object.__setattr__(self, "sparsity", self.n / self.m)
        elif not (0.0 < self.sparsity < 1.0):
            raise UserError(f"sparsity {self.sparsity} is outside (0, 1): use e.g. 0.5")
        if self.group not in ("row", "layer"):
            raise UserError(f"unknown comparison group '{self.group}': use row or layer")

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.sparsity:g} unstructured per {self.group}"

    @property
    def slug(self) -> str:
        return f"{self.n}of{self.m}" if self.is_nm else f"u{self.sparsity:g}-{self.group}"


def parse_pattern(sparsity: float = 0.5, pattern: str | None = None, group: str = "row") -> Pattern:
    """``pattern`` is None/'unstructured' or 'N:M'."""
    if pattern in (None, "", "unstructured"):
        return Pattern(sparsity=float(sparsity), group=group)
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not m:
        raise UserError(f"pattern '{pattern}' is not N:M: use e.g. 2:4, 4:8 or 'unstructured'")
    return Pattern(n=int(m.group(1)), m=int(m.group(2)))


def check_scores(score: torch.Tensor, weight: torch.Tensor, where: str = "") -> None:
    if score.shape != weight.shape:
        raise MetricError(f"metric gave shape {tuple(score.shape)} for weight {tuple(weight.shape)}{where}: "
                          "a metric must give one score per weight")
    if not torch.isfinite(score).all():
        raise MetricError(f"metric gave NaN/Inf scores{where}: protect the formula (e.g. log, div) "
                          "or check the calibration statistics")


def mask_from_scores(score: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Bool mask (True = prune) removing the lowest scores of each comparison group."""
    rows, cols = score.shape
    if pattern.is_nm:
        if cols % pattern.m:
            raise UserError(f"N:M with M={pattern.m} needs the input size ({cols}) to be a multiple of M")
        if pattern.m <= PAIRWISE_MAX_M and not bool(torch.isnan(score).any()):  # NaN has no pairwise order
            return lowest_n_of_m(score, pattern.n, pattern.m)
        return sorted_n_of_m(score, pattern.n, pattern.m)
    if pattern.group == "row":
        return lowest_k(score, int(cols * pattern.sparsity))
    return lowest_k(score.reshape(1, -1), int(score.numel() * pattern.sparsity)).view(rows, cols)


def lowest_k(score: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, mark the k lowest scores; among ties at the boundary the lowest indices go first.

    The same mask as taking the first k indices of a stable ascending sort, in O(n) per row (k-th value
    selection instead of a full sort), which is what makes per-candidate masks cheap in the search.
    """
    rows, cols = score.shape
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    if k >= cols:
        return torch.ones_like(score, dtype=torch.bool)
    kth = torch.kthvalue(score, k, dim=1, keepdim=True).values
    below = score < kth
    room = k - below.sum(dim=1, keepdim=True)
    tied = score == kth
    if bool((tied.sum(dim=1, keepdim=True) <= room).all()):  # no row has more ties than room: no cumsum needed
        return below | tied
    return below | (tied & (torch.cumsum(tied, dim=1) <= room))


# N:M groups up to this size are ranked by pairwise comparisons (M(M-1)/2 elementwise ops over 1/M of the
# weights each); larger groups (and scores holding NaN) by a stable sort. Same mask either way;
# benchmarks/nm_masks.py measures both paths at 2:4, 4:8 and 8:16.
PAIRWISE_MAX_M = 8


def sorted_n_of_m(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of m consecutive inputs, mark the first n of a stable ascending sort (NaN last)."""
    rows, cols = score.shape
    idx = torch.sort(score.reshape(rows, cols // m, m), dim=-1, stable=True).indices[..., :n]
    mask = torch.zeros(rows, cols // m, m, dtype=torch.bool, device=score.device)
    return mask.scatter_(-1, idx, True).reshape(rows, cols)


def lowest_n_of_m(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of m consecutive inputs, mark the n lowest scores; ties go to the lower index first.

    The same mask as the first n indices of a stable ascending sort of each group: a weight's rank is the number of
    group members strictly below it plus the tied ones at a lower index. Scores must not hold NaN (which compares
    with nothing, so the count would not be exact); ``mask_from_scores`` sorts those instead. Pairwise comparisons
    instead of a sort of many tiny groups: several times faster on a CPU, where the 2:4 selection otherwise costs
    as much as a forward pass of SmolLM2 in the search.
    """
    rows, cols = score.shape
    grouped = score.reshape(rows, cols // m, m)
    members = [grouped[..., i] for i in range(m)]
    rank = [torch.zeros(grouped.shape[:-1], dtype=torch.uint8, device=score.device) for _ in range(m)]
    for i in range(m):
        for j in range(i + 1, m):
            j_first = members[j] < members[i]   # on a tie the lower index i comes first
            rank[i] += j_first
            rank[j] += ~j_first
    return torch.stack([r < n for r in rank], dim=-1).reshape(rows, cols)


class WeightSnapshot:
    """Copies of weights taken before pruning, to restore them bit-exactly (the search prunes thousands of times)."""

    def __init__(self, linears: dict, device: str | torch.device | None = None):
        self.linears = linears
        self.saved = {k: lin.weight.detach().to(device or lin.weight.device, copy=True)
                      for k, lin in linears.items()}

    @torch.no_grad()
    def restore(self) -> None:
        for k, lin in self.linears.items():
            lin.weight.copy_(self.saved[k])


@torch.no_grad()
def apply_mask(linear: torch.nn.Linear, mask: torch.Tensor) -> None:
    linear.weight.masked_fill_(mask.to(linear.weight.device), 0)


def sparsity_of(linears: dict) -> float:
    zeros = sum(int((lin.weight == 0).sum()) for lin in linears.values())
    total = sum(lin.weight.numel() for lin in linears.values())
    return zeros / max(1, total)
