"""Which experts to drop, and dropping them: a model of the same architecture with fewer experts.

``choose`` picks the experts to keep per layer from their scores: per layer (every MoE layer drops the same
number, the only choice a stock config can hold: transformers' MoE configs have one expert count for all layers)
or globally (the lowest scores over all layers, with at least ``floor`` >= top-k experts kept per layer; the
counts then differ per layer, so such a model is evaluated in memory but cannot be saved as a stock checkpoint).
Routing that first picks groups of experts (DeepSeek-V3 / GLM-4.5 ``n_group`` > 1) drops the same number from
every group, so the groups stay equal.

``drop_experts`` slices, in place, every per-expert tensor of the experts module (the fused matrices and their
biases), the router's per-expert rows (its weight, and its bias or score-correction bias), the modules' expert
counts and the config's expert count. Ties keep the lower expert index (a stable sort).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from ...errors import UserError
from ...models import decoder_layers
from ...models.moe import MOE_FAMILIES, experts_modules, router_of

SCOPES = ("layer", "global")


def _top_k(model: nn.Module) -> int:
    return int(model.config.num_experts_per_tok)


def _groups(model: nn.Module) -> int:
    fam = MOE_FAMILIES[model.config.model_type]
    return int(getattr(model.config, "n_group", 1) or 1) if fam.grouped else 1


def drop_count(experts: int, drop: float, top_k: int, groups: int = 1) -> int:
    """Experts one layer drops for fraction ``drop`` (rounded to the nearest multiple of ``groups``), refused
    when fewer than top-k would stay."""
    n = round(experts * drop / groups) * groups
    if experts - n < top_k:
        raise UserError(f"dropping {n} of {experts} experts leaves fewer than the {top_k} each token is routed "
                        f"to: use --drop {(experts - top_k) / experts:.3g} or less")
    if n == 0:
        raise UserError(f"--drop {drop:g} removes no expert of {experts}"
                        + (f" (groups of {experts // groups} drop equally)" if groups > 1 else "")
                        + f": use at least --drop {groups / experts:.3g}")
    return n


def choose(model: nn.Module, scores: dict[int, torch.Tensor], drop: float, scope: str = "layer",
           floor: int | None = None) -> dict[int, list[int]]:
    """The experts each MoE layer keeps (sorted ids) when a fraction ``drop`` of them goes, lowest scores first."""
    if scope not in SCOPES:
        raise UserError(f"unknown scope '{scope}': use layer or global")
    top_k, groups = _top_k(model), _groups(model)
    floor = top_k if floor is None else floor
    if floor < top_k:
        raise UserError(f"--floor {floor} is below the {top_k} experts each token is routed to: use {top_k} or more")
    keep: dict[int, list[int]] = {}
    if scope == "layer":
        for i, s in scores.items():
            n = drop_count(s.numel(), drop, top_k, groups)
            per = s.numel() // groups
            order = [torch.argsort(s[g * per:(g + 1) * per], stable=True) + g * per for g in range(groups)]
            gone = {int(e) for o in order for e in o[: n // groups]}
            keep[i] = [e for e in range(s.numel()) if e not in gone]
        return keep
    if groups > 1:
        raise UserError("grouped routing (n_group > 1) keeps its groups equal: use --scope layer")
    total = sum(s.numel() for s in scores.values())
    n = round(total * drop)
    ranked = sorted(((float(s[e]), i, e) for i, s in scores.items() for e in range(s.numel())))
    left = {i: s.numel() for i, s in scores.items()}
    gone: set[tuple[int, int]] = set()
    for _, i, e in ranked:
        if len(gone) == n:
            break
        if left[i] > floor:
            gone.add((i, e))
            left[i] -= 1
    if len(gone) < n:
        raise UserError(f"--drop {drop:g} asks for {n} experts but the floor of {floor} per layer allows "
                        f"{len(gone)}: lower --drop or --floor")
    return {i: [e for e in range(s.numel()) if (i, e) not in gone] for i, s in scores.items()}


def _slice(module: nn.Module, name: str, idx: torch.Tensor) -> None:
    t = getattr(module, name)
    new = t.detach()[idx.to(t.device)].clone()
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        module._buffers[name] = new


@torch.no_grad()
def drop_experts(model: nn.Module, keep: dict[int, list[int]]) -> None:
    """Remove every expert not in ``keep[layer]`` from the model in place (weights, router rows, counts)."""
    fam = MOE_FAMILIES[model.config.model_type]
    counts = {len(k) for k in keep.values()}
    layers = decoder_layers(model)
    for i, kept in keep.items():
        block = layers[i]
        ((name, experts),) = experts_modules(block).items()
        n = getattr(experts, "gate_up_proj").shape[0]
        idx = torch.tensor(kept, dtype=torch.long)
        for pname, p in list(experts.named_parameters(recurse=False)):
            if p.shape[0] == n:
                _slice(experts, pname, idx)
        router = router_of(experts, block, name)
        for r in fam.expert_rows:
            _slice(router, r, idx)
        parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
        for mod in (experts, router, parent):
            if isinstance(getattr(mod, "num_experts", None), int):
                mod.num_experts = len(kept)
    if len(counts) == 1:
        setattr(model.config, fam.count, counts.pop())


def uniform(keep: dict[int, list[int]]) -> bool:
    """Whether every layer keeps the same number of experts (what a stock checkpoint's config can hold)."""
    return len({len(k) for k in keep.values()}) <= 1


def experts_left(keep: dict[int, list[int]]) -> tuple[int, int]:
    return min(len(k) for k in keep.values()), max(len(k) for k in keep.values())




@contextmanager
def dropped(model: nn.Module, keep: dict[int, list[int]]):
    """The model with only ``keep[layer]`` experts inside the block, and exactly the original tensors, counts and
    config afterwards (the sliced copies are dropped; nothing is copied back)."""
    fam = MOE_FAMILIES[model.config.model_type]
    layers = decoder_layers(model)
    saved = []
    for i in keep:
        block = layers[i]
        ((name, experts),) = experts_modules(block).items()
        router = router_of(experts, block, name)
        parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
        for mod in (experts, router, parent):
            saved.append((mod, dict(mod._parameters), dict(mod._buffers), getattr(mod, "num_experts", None)))
    count = getattr(model.config, fam.count)
    try:
        drop_experts(model, keep)
        yield model
    finally:
        for mod, params, buffers, n in saved:
            mod._parameters.update(params)
            mod._buffers.update(buffers)
            if isinstance(n, int):
                mod.num_experts = n
        setattr(model.config, fam.count, count)
