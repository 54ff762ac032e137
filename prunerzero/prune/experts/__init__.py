"""Expert pruning: whole routed experts removed from a mixture of experts by a score (routing frequency, REAP,
or any formula over expert-level terminals), giving a model of the same architecture with fewer experts that
loads with plain transformers (STUN's first stage; unstructured pruning inside the kept experts composes with
it: ``prunerzero prune`` on the saved folder)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .remove import SCOPES, choose, drop_count, drop_experts, uniform
from .scores import SCORES, LayerTerms, expert_score, expert_terms, score_layer


@dataclass
class ExpertPruneResult:
    score: str
    drop: float
    scope: str
    keep: dict[int, list[int]]
    experts_before: int
    experts_after: int
    params_before: int
    params_after: int
    seconds: float
    tokens: dict[int, list[int]] = field(default_factory=dict)

    def line(self) -> str:
        counts = sorted({len(k) for k in self.keep.values()})
        per = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        return (f"experts {self.experts_before} -> {self.experts_after} over {len(self.keep)} MoE layers ({per} "
                f"per layer, by {self.score}, {self.scope}); parameters {self.params_before:,} -> "
                f"{self.params_after:,}")

    def as_dict(self) -> dict:
        return {"score": self.score, "drop": self.drop, "scope": self.scope,
                "keep": {str(i): k for i, k in self.keep.items()}, "experts_before": self.experts_before,
                "experts_after": self.experts_after, "params_before": self.params_before,
                "params_after": self.params_after, "seconds": self.seconds,
                "tokens": {str(i): t for i, t in self.tokens.items()}}


def prune_experts(model: nn.Module, windows: torch.Tensor, score: str, drop: float, scope: str = "layer",
                  floor: int | None = None, batch_size: int = 1, progress: bool = True,
                  terms: dict[int, LayerTerms] | None = None) -> ExpertPruneResult:
    """Score every routed expert on the calibration ``windows`` (dense model), drop the lowest fraction ``drop``
    and slice the model in place; ``terms`` reuses expert statistics computed before (a search scores many
    formulas on one pass)."""
    t0 = time.time()
    name, formula = expert_score(score)
    if terms is None:
        terms = expert_terms(model, windows, batch_size, progress)
    scores = {i: score_layer(formula, t) for i, t in terms.items()}
    keep = choose(model, scores, drop, scope, floor)
    before = sum(p.numel() for p in model.parameters())
    drop_experts(model, keep)
    after = sum(p.numel() for p in model.parameters())
    return ExpertPruneResult(name, drop, scope, keep, sum(s.numel() for s in scores.values()),
                             sum(len(k) for k in keep.values()), before, after, time.time() - t0,
                             {i: [int(x) for x in t.tokens] for i, t in terms.items()})


__all__ = ["SCORES", "SCOPES", "ExpertPruneResult", "LayerTerms", "choose", "drop_count", "drop_experts",
           "expert_score", "expert_terms", "prune_experts", "score_layer", "uniform"]
