"""Expert-level statistics and scores: how much each routed expert of a mixture of experts is used and how much
it contributes, from one routed-calibration pass over the dense model.

Per MoE layer and expert (``calibration.experts.RoutedInputs``, the router's own top-k on the calibration tokens):
``freq`` the fraction of the layer's tokens whose top-k holds the expert; ``gate`` its mean gate weight over
those tokens; ``onorm`` the mean L2 norm of its output over them; ``reap`` the mean of gate x output norm (REAP,
Lasby et al. 2025: the expert's expected contribution to the layer output); ``wnorm`` the Frobenius norm of its
weights. An expert that no token reaches scores 0 on the routed terms. A score is a named one (``SCORES``) or any
formula over these terminals read by prunerzero's formula parser (``metric.parse`` with
``ops.EXPERT_TERMINALS``; never ``eval``); the experts with the lowest scores are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ...calibration.blocks import BlockRunner
from ...calibration.experts import RoutedInputs
from ...errors import UserError
from ...metric.expr import Node, evaluate, parse
from ...metric.ops import EXPERT_TERMINALS
from ...models import decoder_layers
from ...models.moe import FUSED, experts_modules

# Named expert scores and the formula each one is.
SCORES = {"frequency": "freq", "reap": "reap", "gate": "gate", "onorm": "onorm", "wnorm": "wnorm"}


@dataclass(frozen=True)
class LayerTerms:
    """The expert-level terminals of one MoE layer (each [experts]) and the module's name inside its block."""
    name: str
    tokens: torch.Tensor
    total: int
    terms: dict[str, torch.Tensor]


def expert_score(text: str) -> tuple[str, Node]:
    """(name, formula) of a named score or a formula over ``EXPERT_TERMINALS``; a bad one is a UserError."""
    if text in SCORES:
        return text, parse(SCORES[text], EXPERT_TERMINALS)
    return text, parse(text, EXPERT_TERMINALS)


def _weight_norms(experts: nn.Module) -> torch.Tensor:
    sq = sum(getattr(experts, p).detach().float().flatten(1).square().sum(1) for p in FUSED)
    return sq.sqrt().cpu()


@torch.no_grad()
def expert_terms(model: nn.Module, windows: torch.Tensor, batch_size: int = 1,
                 progress: bool = True) -> dict[int, LayerTerms]:
    """The expert terminals of every MoE layer (by decoder-layer index) from one dense pass of the block runner."""
    runner = BlockRunner(model, windows, batch_size)
    out: dict[int, LayerTerms] = {}
    for i, block in enumerate(tqdm(decoder_layers(model), desc="expert statistics", disable=not progress)):
        mods = experts_modules(block)
        recs = {n: RoutedInputs(m, min_tokens=0) for n, m in mods.items()}
        outs = runner.run(block)
        for name, rec in recs.items():
            rec.remove()
            r = rec.finish(int(windows.shape[0]))
            used = r.tokens.clamp_min(1).double()
            terms = {"freq": r.tokens.double() / max(1, r.total_tokens), "gate": r.gate / used,
                     "onorm": r.out_norm / used, "reap": r.reap / used, "wnorm": _weight_norms(mods[name])}
            out[i] = LayerTerms(name, r.tokens, r.total_tokens, {k: v.float() for k, v in terms.items()})
            rec.acc.clear()
        runner.advance(outs)
    if not out:
        raise UserError("this model has no routed experts: expert pruning needs a mixture of experts")
    return out


def score_layer(formula: Node, layer: LayerTerms) -> torch.Tensor:
    """One score per expert of a layer; non-finite scores are refused (they cannot be ranked)."""
    env = dict(layer.terms)
    env["W"] = torch.zeros_like(layer.terms["freq"])  # the shape every score takes: one value per expert
    score = evaluate(formula, env).float()
    if not torch.isfinite(score).all():
        raise UserError(f"expert score {formula} is not finite for some expert of {layer.name}: use a protected "
                        "formula (e.g. add a constant inside log or div)")
    return score
