"""Layer-wise sparsity allocation: how much of each decoder block to prune, for any metric.

* ``uniform``: every block at the target sparsity (the default; the masks of ``masks.mask_from_scores``).
* ``owl``: OWL (Yin et al. 2024, "Outlier Weighed Layerwise sparsity"). Per decoder block, the outlier ratio
  r_b = fraction of the block's Wanda scores |W|·sqrt(X) (all its Linear layers together) above M × their mean
  (dense one-shot statistics, as OWL's code computes them before pruning). Blocks with more outliers are pruned
  less: a_b = 2λ (r_b − min r) / (max r − min r) and s_b = target − a_b + shift, the shift making the mean equal
  the target (OWL's defaults: λ = 0.08, M = 5). OWL's own code takes the plain mean over blocks; we weight it by
  block size, which is the same for LLaMA-style models (equal blocks) and keeps the total exact otherwise.
* ``linear``: a per-depth schedule s_b = target + slope × (b / (L − 1) − 1/2) (the same size-weighted shift).

The family is searchable: ``Allocation(kind, lam, m, slope)`` validates its parameters, and ``to_dict`` /
``Allocation.from_dict`` carry it in a search space or a run record.

**Exact totals.** Let T be the number of prunable weights and P* = int(T × target). Each Linear l of block b gets
an integer count (per output row for the per-row group: every row of the layer loses k_l weights; for the
per-layer group: the layer loses k_l weights), starting from floor(s_b × group size); then, in order of the
largest rounding remainder (ties: first layer first), counts are raised by one while the total stays <= P*. So
the total pruned P satisfies 0 <= P* − P < min over layers of the granule (rows_l for per-row groups, 1 for per
layer), i.e. the mean sparsity equals the target within min rows / T; with per-layer groups it is exactly P*.
``uniform`` keeps today's masks (each row loses int(cols × target)), which is the same total as the counts above
for equal-width layers only up to that rounding.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..errors import UserError
from .masks import Pattern, lowest_k

KINDS = ("uniform", "owl", "linear")


@dataclass(frozen=True)
class Allocation:
    kind: str = "uniform"
    lam: float = 0.08      # OWL's λ: the spread of block sparsities is 2λ
    m: float = 5.0         # OWL's M: a score is an outlier above M × its block's mean score
    slope: float = 0.0     # linear: last block's sparsity minus the first block's

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"unknown allocation '{self.kind}': use {', '.join(KINDS)}")
        for name in ("lam", "m", "slope"):
            if not math.isfinite(float(getattr(self, name))):
                raise UserError(f"allocation {name} must be a finite number")
        if self.lam < 0:
            raise UserError(f"OWL lambda {self.lam} must be >= 0 (OWL uses 0.08)")
        if self.m <= 0:
            raise UserError(f"OWL M {self.m} must be > 0 (OWL uses 5)")

    @property
    def is_uniform(self) -> bool:
        return (self.kind == "uniform" or (self.kind == "owl" and self.lam == 0)
                or (self.kind == "linear" and self.slope == 0))

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict | None) -> "Allocation":
        d = dict(d or {})
        unknown = set(d) - {"kind", "lam", "m", "slope"}
        if unknown:
            raise UserError(f"unknown allocation key(s) {', '.join(sorted(unknown))}: use kind, lam, m, slope")
        try:
            return Allocation(**{k: (str(v) if k == "kind" else float(v)) for k, v in d.items()})
        except (TypeError, ValueError):
            raise UserError("allocation lam, m and slope must be numbers") from None


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Fraction of the scores (all tensors together) above m × their mean (OWL's ``check_outlier_mean``)."""
    total = sum(float(s.double().sum()) for s in scores)
    n = sum(s.numel() for s in scores)
    thr = m * total / max(1, n)
    return sum(int((s > thr).sum()) for s in scores) / max(1, n)


@torch.no_grad()
def owl_ratios(blocks: list[dict[str, nn.Linear]], x_of, m: float) -> list[float]:
    """Outlier ratio per block of Wanda's |W|·sqrt(X); ``x_of(block_index, name)`` gives X ([in] or [1, in])."""
    out = []
    for b, linears in enumerate(blocks):
        scores = [lin.weight.detach().float().abs() * x_of(b, n).to(lin.weight.device).float().view(1, -1).sqrt()
                  for n, lin in linears.items()]
        out.append(outlier_ratio(scores, m))
    return out


def block_sparsities(alloc: Allocation, target: float, sizes: list[int], ratios: list[float] | None = None
                     ) -> list[float]:
    """Sparsity of each block (size-weighted mean = target); refuses values outside (0, 1)."""
    L = len(sizes)
    if alloc.kind == "owl" and not alloc.is_uniform:
        if ratios is None or len(ratios) != L:
            raise UserError("OWL allocation needs one outlier ratio per block")
        lo, hi = min(ratios), max(ratios)
        a = [0.0] * L if hi == lo else [2 * alloc.lam * (r - lo) / (hi - lo) for r in ratios]
        raw = [target - v for v in a]
    elif alloc.kind == "linear" and L > 1:
        raw = [target + alloc.slope * (b / (L - 1) - 0.5) for b in range(L)]
    else:
        raw = [target] * L
    total = sum(sizes)
    shift = target - sum(s * n for s, n in zip(raw, sizes)) / total
    out = [s + shift for s in raw]
    bad = [(b, s) for b, s in enumerate(out) if not (0.0 < s < 1.0)]
    if bad:
        b, s = bad[0]
        raise UserError(f"allocation {alloc.kind} gives block {b} sparsity {s:.3f}, outside (0, 1): "
                        "lower lambda / slope")
    return out


def layer_counts(layers: dict[str, tuple[int, int, float]], pattern: Pattern) -> dict[str, int]:
    """Integer prune counts with an exact total (see the module doc).

    ``layers`` maps a key to (rows, cols, sparsity of its block), in a fixed order; the count is per row for the
    per-row group and per layer for the per-layer group.
    """
    if pattern.is_nm:
        raise UserError("a layer-wise sparsity allocation needs unstructured sparsity: N:M fixes every group")
    per_row = pattern.group == "row"
    total = sum(r * c for r, c, _ in layers.values())
    target_total = int(total * pattern.sparsity)
    counts, ideal, gran, cap = {}, {}, {}, {}
    for key, (r, c, s) in layers.items():
        unit = c if per_row else r * c
        ideal[key] = s * unit
        counts[key] = min(unit, int(math.floor(ideal[key])))
        gran[key] = r if per_row else 1
        cap[key] = unit
    pruned = sum(counts[k] * gran[k] for k in counts)
    for k in sorted(counts, key=lambda k: ideal[k] - counts[k]):  # float rounding only: never above P*
        if pruned <= target_total:
            break
        if counts[k] > 0:
            counts[k] -= 1
            pruned -= gran[k]
    changed = True
    while changed and pruned < target_total:
        changed = False
        # most under-allocated first (the largest rounding remainder); stable: ties keep the layer order
        for k in sorted(counts, key=lambda k: counts[k] - ideal[k]):
            if counts[k] < cap[k] and pruned + gran[k] <= target_total:
                counts[k] += 1
                pruned += gran[k]
                changed = True
    return counts


def mask_with_count(score: torch.Tensor, pattern: Pattern, count: int) -> torch.Tensor:
    """The mask of ``masks.mask_from_scores`` with ``count`` weights per group instead of the pattern's."""
    if pattern.group == "row":
        return lowest_k(score, count)
    return lowest_k(score.reshape(1, -1), count).view(score.shape)


def allocate(model: nn.Module, alloc: Allocation, pattern: Pattern, x_of=None) -> dict[str, int]:
    """Per-layer prune counts for every prunable Linear (keys ``layers.{i}.{name}``) under ``alloc``.

    ``x_of(block_index, name)`` gives X for OWL (dense one-shot statistics); other kinds need no data.
    """
    from ..models import decoder_layers, prunable_linears

    blocks = [prunable_linears(b) for b in decoder_layers(model)]
    sizes = [sum(lin.weight.numel() for lin in bl.values()) for bl in blocks]
    ratios = None
    if alloc.kind == "owl" and not alloc.is_uniform:
        if x_of is None:
            raise UserError("OWL allocation needs activation statistics X")
        ratios = owl_ratios(blocks, x_of, alloc.m)
    sp = block_sparsities(alloc, pattern.sparsity, sizes, ratios)
    layers = {f"layers.{b}.{n}": (lin.out_features, lin.in_features, sp[b])
              for b, bl in enumerate(blocks) for n, lin in bl.items()}
    return layer_counts(layers, pattern)


__all__ = ["Allocation", "KINDS", "allocate", "block_sparsities", "layer_counts", "mask_with_count",
           "outlier_ratio", "owl_ratios"]
