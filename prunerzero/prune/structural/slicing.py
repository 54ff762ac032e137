"""Physically smaller models: slice the kept KV groups and MLP channels into new Linear layers, count parameters,
save a folder transformers can load, and time a forward pass."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from ...errors import UserError
from ...models import decoder_layers, role, set_role, structural_roles
from .groups import ATTN, MLP, Layout

REMOTE_CODE = Path(__file__).resolve().parents[2] / "models" / "modeling_pruned_llama.py"


def _rows(lin: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    new = nn.Linear(lin.in_features, int(keep.numel()), bias=lin.bias is not None,
                    device=lin.weight.device, dtype=lin.weight.dtype)
    new.weight.data.copy_(lin.weight.data[keep])
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.data[keep])
    return new


def _cols(lin: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    new = nn.Linear(int(keep.numel()), lin.out_features, bias=lin.bias is not None,
                    device=lin.weight.device, dtype=lin.weight.dtype)
    new.weight.data.copy_(lin.weight.data[:, keep])
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.data)
    return new


@torch.no_grad()
def slice_model(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[dict]:
    """Physically remove pruned KV groups and MLP channels; returns the per-layer widths (also in the config)."""
    lay = Layout.of(model)
    fam = structural_roles(model)
    shapes = []

    def cut(layer, kind, index, idx, rows):
        lin = role(layer, fam, kind, index)
        set_role(layer, fam, kind, index, (_rows if rows else _cols)(lin, idx.to(lin.weight.device)))

    for i, layer in enumerate(decoder_layers(model)):
        attn, mlp = getattr(layer, fam.attn[0]), getattr(layer, fam.mlp[0])
        groups = torch.nonzero(masks[ATTN][i]).flatten()
        kv_idx = (groups[:, None] * lay.head_dim + torch.arange(lay.head_dim)).flatten()
        q_heads = (groups[:, None] * lay.q_per_kv + torch.arange(lay.q_per_kv)).flatten()
        q_idx = (q_heads[:, None] * lay.head_dim + torch.arange(lay.head_dim)).flatten()
        for index, idx, rows in ((0, q_idx, True), (1, kv_idx, True), (2, kv_idx, True), (3, q_idx, False)):
            cut(layer, ATTN, index, idx, rows)
        for name in ("num_heads", "num_key_value_heads"):
            if hasattr(attn, name):
                setattr(attn, name, len(q_heads) if name == "num_heads" else len(groups))
        ch = torch.nonzero(masks[MLP][i]).flatten()
        for index, rows in ((0, True), (1, True), (2, False)):
            cut(layer, MLP, index, ch, rows)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(ch)
        shapes.append({"num_attention_heads": len(q_heads), "num_key_value_heads": len(groups),
                       "intermediate_size": len(ch)})
    model.config.layer_shapes = shapes
    return shapes


def uniform_shape(model: nn.Module) -> dict | None:
    """The one width every layer of a sliced model has, or None where layers differ (or nothing was sliced)."""
    shapes = getattr(model.config, "layer_shapes", None) or []
    return dict(shapes[0]) if shapes and all(s == shapes[0] for s in shapes) else None


def save_structural(model: nn.Module, tokenizer, folder: str | Path) -> bool:
    """save_pretrained a sliced model; returns whether the folder needs ``trust_remote_code=True``.

    Every layer the same width, any family structural pruning supports: the family's stock config
    (num_attention_heads, num_key_value_heads, intermediate_size and head_dim written), loaded by plain
    ``AutoModelForCausalLM.from_pretrained(folder)``. Per-layer widths (LLaMA): the widths go to config.json with
    the 40-line modeling file that restores them on load (``prunerzero export --format gguf`` turns that folder
    into a GGUF llama.cpp runs).
    """
    from ...fsutil import atomic_folder

    check_save(model.config, uniform_shape(model) is not None)
    lay = Layout.of(model)
    same = uniform_shape(model)
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        if same is not None:
            cfg.pop("layer_shapes", None)
            cfg.update(same, head_dim=lay.head_dim)
        else:
            cfg.update(model_type="pruned_llama", architectures=["PrunedLlamaForCausalLM"],
                       layer_shapes=model.config.layer_shapes,
                       auto_map={"AutoConfig": "modeling_pruned_llama.PrunedLlamaConfig",
                                 "AutoModelForCausalLM": "modeling_pruned_llama.PrunedLlamaForCausalLM"})
            shutil.copy(REMOTE_CODE, tmp / REMOTE_CODE.name)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return same is None


def check_save(config, uniform: bool) -> None:
    """Refuse (before any work, from the config) a save no loader could read: per-layer widths of a family other
    than LLaMA (its stock class has one width for all layers)."""
    if not uniform and getattr(config, "model_type", None) not in ("llama", "pruned_llama"):
        raise UserError(f"per-layer widths of a {config.model_type} model have no loadable folder format (prunerzero's "
                        "per-layer class is LLaMA's): prune with --uniform to save a stock config of the family")


def count_params(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    fam = structural_roles(model)
    prunable = sum(role(layer, fam, kind, j).weight.numel() for layer in decoder_layers(model)
                   for kind, n in ((ATTN, 4), (MLP, 3)) for j in range(n))
    return {"total": total, "prunable": prunable}


@torch.no_grad()
def forward_latency(model: nn.Module, seqlen: int, batch: int = 1, repeats: int = 20, warmup: int = 2) -> float:
    """Median seconds of one forward pass on random tokens [batch, seqlen], after ``warmup`` untimed passes
    (benchmarks/structural_speed.py also times decoding)."""
    from ...timing import timed

    dev = model.get_input_embeddings().weight.device
    ids = torch.randint(0, model.config.vocab_size, (batch, seqlen), device=dev)
    return timed(lambda: model(ids, use_cache=False), dev, repeats, warmup)["median_s"]
