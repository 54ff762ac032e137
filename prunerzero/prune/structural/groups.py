"""Structures and what scores them: the layout of KV-head groups and MLP channels, the forward pre-hooks that
mask them per sample, and per-structure scores from a per-weight metric.

A KV-head group is the k/v rows of one KV head, the q rows of the query heads that share it under grouped-query
attention, and the matching o_proj columns; an MLP channel is a gate/up row and the matching down_proj column.
Zeroing a group's o_proj input (a channel's down_proj input) is the same as removing it, which is what the hooks do.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ...calibration import Stats
from ...errors import UserError
from ...metric.expr import Node, evaluate
from ...models import decoder_layers, role, structural_roles

ATTN, MLP = "attn", "mlp"


@dataclass(frozen=True)
class Layout:
    """How many structures of each type each layer has, and what one costs in parameters."""

    layers: int
    kv_heads: int
    q_per_kv: int
    head_dim: int
    hidden: int
    intermediate: int

    @staticmethod
    def of(model: nn.Module) -> "Layout":
        structural_roles(model)  # a one-line UserError for families structural pruning does not know
        cfg = model.config
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return Layout(cfg.num_hidden_layers, kv, heads // kv, head_dim, cfg.hidden_size, cfg.intermediate_size)

    @property
    def attn_group_params(self) -> int:   # q rows + k rows + v rows + o columns of one KV group
        return self.hidden * self.head_dim * (2 * self.q_per_kv + 2)

    @property
    def mlp_channel_params(self) -> int:  # gate row + up row + down column
        return 3 * self.hidden

    @property
    def counts(self) -> dict[str, int]:
        return {ATTN: self.layers * self.kv_heads, MLP: self.layers * self.intermediate}

    def prunable_params(self) -> int:
        return self.layers * (self.kv_heads * self.attn_group_params + self.intermediate * self.mlp_channel_params)


class StructureMasks:
    """Forward pre-hooks multiplying o_proj / down_proj inputs by per-sample structure masks.

    ``set(attn, mlp)`` takes masks shaped [S, layers, kv_heads] and [S, layers, intermediate]; the batch fed to
    the model must then be S equal-sized blocks of rows, sample s masking block s. ``set(None, None)`` disables.
    """

    def __init__(self, model: nn.Module):
        self.layout = Layout.of(model)
        self.attn: torch.Tensor | None = None
        self.mlp: torch.Tensor | None = None
        self.handles = []
        fam = structural_roles(model)
        for i, layer in enumerate(decoder_layers(model)):
            self.handles.append(role(layer, fam, ATTN, 3).register_forward_pre_hook(self._hook(i, ATTN)))
            self.handles.append(role(layer, fam, MLP, 2).register_forward_pre_hook(self._hook(i, MLP)))

    def _hook(self, i: int, kind: str):
        lay = self.layout

        def hook(_module, args):
            masks = self.attn if kind == ATTN else self.mlp
            if masks is None:
                return None
            x = args[0]
            m = masks[:, i].to(x.dtype)
            if kind == ATTN:
                m = m.repeat_interleave(lay.q_per_kv * lay.head_dim, dim=-1)
            s = m.shape[0]
            shaped = x.reshape(s, x.shape[0] // s, *x.shape[1:])
            m = m.view(s, *([1] * (shaped.dim() - 2)), m.shape[-1]).to(x.device)
            return ((shaped * m).reshape(x.shape),)
        return hook

    def set(self, attn: torch.Tensor | None, mlp: torch.Tensor | None) -> None:
        self.attn, self.mlp = attn, mlp

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


# ------------------------------------------------------------------------------------------------ initialisation
ATTN_SCORES = ("kv", "out", "qkv", "all")
MLP_SCORES = ("out", "in", "all")



@torch.no_grad()
def structure_scores(model: nn.Module, formula: Node, stats: Stats, attn_from: str = "kv",
                     mlp_from: str = "out") -> dict[str, torch.Tensor]:
    """Per-structure scores: the per-weight metric summed over the weights a structure owns.

    ``attn_from``: ``kv`` the group's k_proj and v_proj rows (default), ``out`` its o_proj columns (the wanda-sp
    choice), ``qkv`` its q/k/v rows, ``all`` q/k/v rows and o columns. ``mlp_from``: ``out`` the down_proj column
    (wanda-sp, default), ``in`` the gate/up rows, ``all`` both. On SmolLM2 (3 KV groups per layer) scoring KV groups
    by their o_proj columns removed worse groups than chance; see results/structural.md.
    """
    if attn_from not in ATTN_SCORES or mlp_from not in MLP_SCORES:
        raise UserError(f"structure scores come from attn {ATTN_SCORES} and mlp {MLP_SCORES}")
    lay = Layout.of(model)
    fam = structural_roles(model)
    attn_parts = {"kv": (1, 2), "out": (3,), "qkv": (0, 1, 2), "all": (0, 1, 2, 3)}[attn_from]  # q k v o
    mlp_parts = {"out": (2,), "in": (0, 1), "all": (0, 1, 2)}[mlp_from]                       # gate up down
    layers = decoder_layers(model)

    def score(i, kind, index):
        parent, names = fam.attn if kind == ATTN else fam.mlp
        lin = role(layers[i], fam, kind, index)
        s = evaluate(formula, stats.env(f"layers.{i}.{parent}.{names[index]}", lin.weight))
        output_side = (kind, index) in ((ATTN, 3), (MLP, 2))  # o_proj / down_proj: a structure owns columns
        return (s.sum(0) if output_side else s.sum(1)).double().cpu()

    attn, mlp = [], []
    for i in range(lay.layers):
        attn.append(sum(score(i, ATTN, n).view(lay.kv_heads, -1).sum(1) for n in attn_parts))
        mlp.append(sum(score(i, MLP, n) for n in mlp_parts))
    out = {ATTN: torch.stack(attn), MLP: torch.stack(mlp)}
    for k, v in out.items():
        if not torch.isfinite(v).all():
            raise UserError(f"the metric gives NaN/Inf {k} structure scores: use another formula")
    return out


def layer_zscores(scores: torch.Tensor) -> torch.Tensor:
    """z-score of structure scores within each layer (row), so layers with large activations do not dominate."""
    s = scores.double()
    std = s.std(dim=1, keepdim=True) if s.shape[1] > 1 else torch.ones_like(s[:, :1])
    return (s - s.mean(dim=1, keepdim=True)) / std.clamp_min(1e-12)


