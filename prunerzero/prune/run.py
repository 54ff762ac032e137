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

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..calibration import BlockRunner, InputStats, Stats, needs_of
from ..calibration.experts import MIN_TOKENS, BlockInputs
from ..errors import UserError
from ..metric.expr import Node, evaluate
from ..models import all_prunable, decoder_layers, prunable_linears
from ..models.moe import FUSED
from .masks import Pattern, apply_mask, check_scores, mask_from_scores
from .admm import admm_prune, lsq_update
from .sparsegpt import PERCDAMP, obs_diag, obs_update, sparsegpt_prune

SPARSEGPT = "sparsegpt"
HESSIAN_UPDATES = ("obs", "lsq", "admm")


@dataclass
class MoeReport:
    """What a prune did to the experts of a mixture of experts: how many expert matrices and experts it pruned,
    how it calibrated them, and every expert that took the all-token fallback (``calibration.experts``), per
    experts module (``layers.{i}.mlp.experts``)."""
    routing: str = "routed"
    min_tokens: int = MIN_TOKENS
    experts: int = 0                 # experts (all their matrices) pruned
    matrices: int = 0                # expert matrices pruned
    fallback: dict[str, list[int]] = field(default_factory=dict)
    tokens: dict[str, list[int]] = field(default_factory=dict)

    def add(self, layer: int, routed: dict) -> None:
        for name, r in routed.items():
            self.tokens[f"layers.{layer}.{name}"] = [int(t) for t in r.tokens]
            if r.fallback:
                self.fallback[f"layers.{layer}.{name}"] = list(r.fallback)

    def count(self, pruned: dict[str, int]) -> None:
        keys = [k for k in pruned if ".experts." in k and k.rsplit(".", 1)[-1] in FUSED]
        self.matrices = len(keys)
        self.experts = len({k.rsplit(".", 1)[0] for k in keys})

    @property
    def fallbacks(self) -> int:
        return sum(len(v) for v in self.fallback.values())

    def line(self) -> str:
        how = ("no calibration" if self.routing == "none" else
               "every expert on every token" if self.routing == "all" else
               f"on its routed tokens; {self.fallbacks} with fewer than {self.min_tokens} took the all-token "
               "fallback")
        return f"experts: {self.experts} pruned in place ({self.matrices} expert matrices), {how}"

    def as_dict(self) -> dict:
        return {"experts": self.experts, "matrices": self.matrices, "routing": self.routing,
                "min_tokens": self.min_tokens, "fallbacks": self.fallbacks, "fallback": self.fallback,
                "tokens": self.tokens}


def metric_score(formula: Node, env: dict, where: str = "") -> torch.Tensor:
    score = evaluate(formula, env)
    check_scores(score, env["W"], f" in {where}" if where else "")
    return score


def metric_mask(formula: Node, env: dict, pattern: Pattern, where: str = "") -> torch.Tensor:
    return mask_from_scores(metric_score(formula, env, where), pattern)


@torch.no_grad()
def metric_masks(formula: Node, linears: dict[str, nn.Linear], stats: Stats, pattern: Pattern,
                 device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """Masks for every layer from one-shot statistics (``stats`` may hold X, G1, G2)."""
    return {key: metric_mask(formula, stats.env(key, lin.weight.to(device) if device else lin.weight), pattern, key)
            for key, lin in linears.items()}


def _formula_terms(method) -> set[str]:
    return set() if method == SPARSEGPT else method.terminals()


def _check_options(method, pattern: Pattern, update: str, counts, permute: bool) -> None:
    from .rules import check_procedure   # the rules live in one module (prune/rules.py)

    check_procedure(SPARSEGPT if method == SPARSEGPT else None, pattern, update,
                    "owl" if counts is not None else "uniform", permute)


def _layer_pattern(pattern: Pattern, counts: dict[str, int] | None, key: str, lin: nn.Linear) -> Pattern:
    """The pattern SparseGPT prunes one layer with: the uniform one, or the layer's allocated sparsity (its prune
    count per row, or per layer, as a fraction; SparseGPT then selects within blocks of columns, so a layer's
    count is met up to one weight per block, as with uniform SparseGPT)."""
    if counts is None:
        return pattern
    unit = lin.in_features if pattern.group == "row" else lin.in_features * lin.out_features
    return Pattern(sparsity=counts[key] / unit, group=pattern.group)


@torch.no_grad()
def prune_model(model: nn.Module, method: "Node | str", pattern: Pattern, windows: torch.Tensor | None = None,
                grads: Stats | None = None, sequential: bool = True, batch_size: int = 1,
                percdamp: float = PERCDAMP, blocksize: int = 128, progress: bool = True, update: str = "none",
                counts: dict[str, int] | None = None, permute: bool = False, routing: str = "routed",
                min_tokens: int = MIN_TOKENS, moe: "MoeReport | None" = None) -> dict[str, int]:
    """Prune every prunable Linear in place; returns the number of weights pruned per layer.

    ``update="obs"``: after a metric's mask, the kept weights of each row are updated by OBS against the layer's
    Hessian from the same pass (``sparsegpt.obs_update``; SparseGPT's reconstruction for any mask); ``"lsq"``
    gives them their exact least-squares values instead (``admm.lsq_update``); ``"admm"`` lets the metric
    re-select the mask on the weights as ADMM updates them, with a sparsity rising to the target, then solves the
    final mask exactly (``admm.admm_prune``).
    ``counts``: per-layer prune counts (per row, or per layer for the per-layer group) from
    ``allocation.allocate`` instead of the pattern's uniform sparsity. ``permute``: N:M with input-channel
    permutation applied to o_proj/down_proj and their producers (``permute.py``).

    Mixtures of experts: every expert's slice of the fused expert parameters is a layer of its own
    (``layers.{i}.mlp.experts.{e}.down_proj``), calibrated on the tokens its router sends to it (``routing="all"``:
    on every token); an expert with fewer than ``min_tokens`` routed tokens is calibrated on every token instead
    (``calibration.experts``). ``moe`` (a ``MoeReport``) receives how many experts were pruned and which took
    that fallback.
    """
    from .allocation import mask_with_count
    from .permute import permutation_for, permute_rows

    _check_options(method, pattern, update, counts, permute)
    terms = _formula_terms(method)
    if needs_of(terms)[1] and grads is None:
        raise UserError("this metric reads gradients (G): compute gradient statistics first")
    hessian = method == SPARSEGPT or update in HESSIAN_UPDATES or "Hd" in terms
    # one-shot X may come with ``grads`` (the cached dense statistics): then no calibration pass is needed
    given_x = not sequential and grads is not None and "X" in grads.terms()
    needs_forward = hessian or ("X" in terms and not given_x)
    pruned: dict[str, int] = {}
    config = getattr(model, "config", None)

    by_key = all_prunable(model) if permute else {}

    def prune_one(key: str, lin: nn.Linear, inp: InputStats | None):
        if method == SPARSEGPT:
            new = sparsegpt_prune(lin.weight, inp.H, _layer_pattern(pattern, counts, key, lin), percdamp=percdamp,
                                  blocksize=blocksize)
            lin.weight.copy_(new.to(lin.weight.dtype))
            pruned[key] = int((new == 0).sum())
            return
        env = grads.env(key, lin.weight) if grads is not None else {"W": lin.weight.detach().float()}
        if inp is not None:
            env["X"] = inp.X.view(1, -1).to(env["W"].device)
            if "Hd" in terms:
                env["Hd"] = obs_diag(inp.H, percdamp).to(env["W"].device)
        found = perm = None
        if update == "admm":
            def score_of(w: torch.Tensor) -> torch.Tensor:
                return metric_score(method, {**env, "W": w}, key)

            new, mask = admm_prune(lin.weight, inp.H, pattern, score_of, percdamp=percdamp,
                                   count=None if counts is None else counts[key])
            lin.weight.copy_(new.to(lin.weight.dtype))
            pruned[key] = int(mask.sum())
            return
        if counts is None and not permute:
            mask = metric_mask(method, env, pattern, key)
        else:
            score = metric_score(method, env, key)
            found = permutation_for(key.split(".", 2)[2], score, pattern, config) if permute else None
            if found is not None:
                perm = found[0].to(score.device)
                score = score[:, perm]  # choose (and reconstruct) in the order the layer will be stored in
            mask = mask_from_scores(score, pattern) if counts is None else mask_with_count(score, pattern,
                                                                                            counts[key])
        weight = lin.weight if perm is None else lin.weight[:, perm]
        if update in ("obs", "lsq"):
            H = inp.H if perm is None else inp.H[perm][:, perm]
            new = (obs_update(weight, H, mask, percdamp=percdamp, blocksize=blocksize) if update == "obs"
                   else lsq_update(weight, H, mask, percdamp=percdamp))
            lin.weight.copy_(new.to(lin.weight.dtype))
        elif perm is not None:
            lin.weight.copy_(weight.masked_fill(mask.to(weight.device), 0))
        else:
            apply_mask(lin, mask)
        if perm is not None:
            for producer, order in found[1].items():
                permute_rows(by_key[key.rsplit(".", 2)[0] + "." + producer], order)
        pruned[key] = int(mask.sum())

    if moe is not None:
        moe.routing, moe.min_tokens = (routing, min_tokens) if needs_forward else ("none", 0)
    if not needs_forward:
        for key, lin in tqdm(all_prunable(model).items(), desc="prune", disable=not progress):
            prune_one(key, lin, None)
        if moe is not None:
            moe.count(pruned)
        return pruned
    if windows is None:
        raise UserError("this method needs calibration data (X or a Hessian): pass calibration windows")
    runner = BlockRunner(model, windows, batch_size)
    for i, block in enumerate(tqdm(decoder_layers(model), desc="prune (layer by layer)", disable=not progress)):
        linears = prunable_linears(block)
        inputs = BlockInputs(linears, hessian=hessian, routing=routing, min_tokens=min_tokens)
        outs = runner.run(block)
        routed = inputs.finish(int(windows.shape[0]))
        if moe is not None:
            moe.add(i, routed)
        for n, lin in linears.items():
            prune_one(f"layers.{i}.{n}", lin, inputs.stats[n])
            inputs.free(n)  # free the Hessian as soon as the layer is done
        if sequential:
            outs = runner.run(block)
        runner.advance(outs)
    if moe is not None:
        moe.count(pruned)
    return pruned
