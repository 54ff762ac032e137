"""One layer loop for every method: metric formulas (magnitude, Wanda, Pruner-Zero, GBLM, any found formula)
and SparseGPT.

``prune_model(..., sequential=True)`` is Wanda's scheme: calibration activations go through the decoder block by
block; each block's statistics are collected from its (already pruned-upstream) inputs, the block is pruned, and
its outputs *after* pruning feed the next block. ``sequential=False`` feeds the dense outputs forward instead, so
every statistic comes from the dense model (one-shot). Gradient statistics G always come from the dense model,
as in Pruner-Zero and GBLM-Pruner.

``metric_masks`` is the fast path the search uses: masks for every layer from cached one-shot statistics,
no forward pass at all.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..calibration import BlockRunner, InputStats, Stats
from ..errors import UserError
from ..metric.expr import Node, evaluate
from ..models import all_prunable, decoder_layers, prunable_linears
from .masks import Pattern, apply_mask, check_scores, mask_from_scores
from .sparsegpt import sparsegpt_prune

SPARSEGPT = "sparsegpt"


def metric_mask(formula: Node, env: dict, pattern: Pattern, where: str = "") -> torch.Tensor:
    score = evaluate(formula, env)
    check_scores(score, env["W"], f" in {where}" if where else "")
    return mask_from_scores(score, pattern)


@torch.no_grad()
def metric_masks(formula: Node, linears: dict[str, nn.Linear], stats: Stats, pattern: Pattern,
                 device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """Masks for every layer from one-shot statistics (``stats`` may hold X, G1, G2)."""
    return {key: metric_mask(formula, stats.env(key, lin.weight.to(device) if device else lin.weight), pattern, key)
            for key, lin in linears.items()}


def _formula_terms(method) -> set[str]:
    return set() if method == SPARSEGPT else method.terminals()


@torch.no_grad()
def prune_model(model: nn.Module, method: "Node | str", pattern: Pattern, windows: torch.Tensor | None = None,
                grads: Stats | None = None, sequential: bool = True, batch_size: int = 1,
                percdamp: float = 0.01, blocksize: int = 128, progress: bool = True) -> dict[str, int]:
    """Prune every prunable Linear in place; returns the number of weights pruned per layer."""
    terms = _formula_terms(method)
    if terms & {"G", "G1", "G2"} and grads is None:
        raise UserError("this metric reads gradients (G): compute gradient statistics first")
    needs_forward = method == SPARSEGPT or "X" in terms
    pruned: dict[str, int] = {}

    def prune_one(key: str, lin: nn.Linear, inp: InputStats | None):
        if method == SPARSEGPT:
            new = sparsegpt_prune(lin.weight, inp.H, pattern, percdamp=percdamp, blocksize=blocksize)
            lin.weight.copy_(new.to(lin.weight.dtype))
            pruned[key] = int((new == 0).sum())
            return
        env = grads.env(key, lin.weight) if grads is not None else {"W": lin.weight.detach().float()}
        if inp is not None:
            env["X"] = inp.X.view(1, -1).to(env["W"].device)
        mask = metric_mask(method, env, pattern, key)
        apply_mask(lin, mask)
        pruned[key] = int(mask.sum())

    if not needs_forward:
        for key, lin in tqdm(all_prunable(model).items(), desc="prune", disable=not progress):
            prune_one(key, lin, None)
        return pruned
    if windows is None:
        raise UserError("this method needs calibration data (X or a Hessian): pass calibration windows")
    runner = BlockRunner(model, windows, batch_size)
    for i, block in enumerate(tqdm(decoder_layers(model), desc="prune (layer by layer)", disable=not progress)):
        linears = prunable_linears(block)
        hooks = {n: InputStats(lin, hessian=method == SPARSEGPT) for n, lin in linears.items()}
        outs = runner.run(block)
        for h in hooks.values():
            h.remove()
        for n, lin in linears.items():
            prune_one(f"layers.{i}.{n}", lin, hooks[n])
            hooks[n].H = None  # free the Hessian as soon as the layer is done
        if sequential:
            outs = runner.run(block)
        runner.advance(outs)
    return pruned
