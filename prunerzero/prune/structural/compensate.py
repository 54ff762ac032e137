"""Least-squares compensation for removed structures, before slicing (``prunerzero structural --reconstruct``).

Removing a KV group deletes its query heads' columns of o_proj; removing an MLP channel deletes its column of
down_proj. The outputs of the removed structures are correlated with those that stay, so the kept columns can take
over part of their contribution: per block, in order, the kept columns of o_proj and then of down_proj get their
least-squares values ``prune.admm.lsq_update`` against the layer Hessian of their inputs on calibration windows,
the removed columns set to zero. The inputs come through the already compensated blocks (Wanda's sequential
scheme) and o_proj is solved before down_proj's inputs are collected, so each solve sees what the pruned model will
feed it. The removed structures' rows (q/k/v, gate/up) still compute during this pass, which is what gives their
columns' inputs; slicing then drops rows and (zero) columns alike, so the sliced model computes exactly the
compensated one. Forward passes only: three block passes per block over the calibration windows.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ...calibration import BlockRunner, InputStats
from ...models import decoder_layers, role, structural_roles
from ..admm import lsq_update
from ..sparsegpt import PERCDAMP
from .groups import ATTN, MLP, Layout


def kept_columns(model: nn.Module, masks: dict, layer: int) -> dict[str, torch.Tensor]:
    """The kept input columns of o_proj (the query heads of kept KV groups) and down_proj (kept channels)."""
    lay = Layout.of(model)
    groups = masks[ATTN][layer].bool().cpu()
    return {"o": groups.repeat_interleave(lay.q_per_kv * lay.head_dim), "down": masks[MLP][layer].bool().cpu()}


@torch.no_grad()
def compensate(model: nn.Module, masks: dict, windows: torch.Tensor, batch_size: int = 1, percdamp: float = PERCDAMP,
               progress: bool = True) -> dict[str, float]:
    """Zero the removed structures' o_proj / down_proj columns and refit the kept ones (in place). Returns, per
    layer, the relative output error left on the calibration inputs, ||(W' - W) X|| / ||W X|| as
    tr((W' - W) H (W' - W)^T) / tr(W H W^T)."""
    fam = structural_roles(model)
    runner = BlockRunner(model, windows, batch_size)
    errors = {}
    for i, layer in enumerate(tqdm(decoder_layers(model), desc="compensate (block by block)", disable=not progress)):
        cols = kept_columns(model, masks, i)
        for name, kind, index in (("o", ATTN, 3), ("down", MLP, 2)):
            lin = role(layer, fam, kind, index)
            hook = InputStats(lin, hessian=True)
            runner.run(layer)
            hook.remove()
            w = lin.weight.detach().float()
            mask = (~cols[name]).to(w.device).view(1, -1).expand_as(w)
            new = lsq_update(w, hook.H, mask, percdamp=percdamp)
            H = hook.H.to(w.device)
            diff = new - w
            errors[f"layers.{i}.{name}"] = float(((diff @ H) * diff).sum() / ((w @ H) * w).sum().clamp_min(1e-30))
            lin.weight.copy_(new.to(lin.weight.dtype))
        runner.advance(runner.run(layer))
    return errors
