"""Decoder blocks and their prunable layers, found generically: the list of identical blocks holding the most
parameters under the base model, and every nn.Linear inside a block (MoE routers excepted), keyed
``layers.{i}.{name inside the block}``. Mixtures of experts of the families in ``moe.MOE_FAMILIES`` prune every
expert's slice of the fused 3-D expert parameters as its own matrix; other mixtures of experts are refused."""
from __future__ import annotations

import hashlib

import torch
import torch.nn as nn

from ..errors import UserError
from .families import ROUTERS, Family, family
from .moe import expert_linears, is_experts_module

def _block_lists(model: nn.Module):
    base = getattr(model, "base_model", None) or model
    for name, mod in base.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and len({type(b) for b in mod}) == 1:
            yield name, mod


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks (refusing models prunerzero cannot prune, see ``check_architecture``)."""
    layers = _decoder_blocks(model)
    prunable_linears(layers[0])  # blocks are one class: the first tells whether their weights are all Linear
    return layers


def _decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of identical blocks holding the most parameters under the base model."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise UserError(f"architecture {type(model).__name__} is an encoder-decoder: this architecture is not "
                        "supported (prunerzero prunes decoder-only causal LMs)")
    lists = [mod for _, mod in _block_lists(model)]
    if not lists:
        raise UserError(f"architecture {type(model).__name__} has no list of decoder blocks: this architecture is "
                        "not supported")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def _is_router(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ROUTERS


def prunable_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear of one decoder block (MoE routers excluded), in registration order; the fused experts of a
    known MoE family give one Linear view per expert and matrix (``moe.expert_linears``).

    Refuses a block whose weights live outside nn.Linear (fused 3-D MoE experts, GPT-2's Conv1D): pruning only the
    Linear part of such a model would silently leave most of it dense.
    """
    kind = type(block).__name__
    out = {}
    inside_experts: list[str] = []
    for name, mod in block.named_modules():
        if any(name.startswith(p + ".") for p in inside_experts):
            continue
        if is_experts_module(mod):  # fused MoE experts of a known family: one view per expert and matrix
            out.update(expert_linears(name, mod))
            inside_experts.append(name)
            continue
        if isinstance(mod, nn.Linear):
            if not _is_router(name):
                out[name] = mod
            continue
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            if p.dim() >= 3:
                what = "fused MoE experts" if "expert" in full else "a fused or convolution weight"
                raise UserError(f"decoder block {kind} holds {what} ({full}, shape {list(p.shape)}) outside "
                                "nn.Linear: this architecture is not supported (dense models with Linear layers "
                                "only)")
            if p.dim() == 2 and not _is_router(name) and not isinstance(mod, nn.Embedding):
                raise UserError(f"decoder block {kind} holds {type(mod).__name__} weights ({full}), not nn.Linear: "
                                "this architecture is not supported")
    if not out:
        raise UserError(f"decoder block {kind} holds no nn.Linear: this architecture is not supported")
    return out


def check_architecture(model: nn.Module) -> None:
    """Refuse models whose decoder blocks cannot be found or do not keep their weights in nn.Linear."""
    decoder_layers(model)


def all_prunable(model: nn.Module) -> dict[str, nn.Linear]:
    """Every prunable Linear of the model keyed ``layers.{i}.{name inside the block}``. Mixtures of experts of the families in ``moe.MOE_FAMILIES`` prune every
expert's slice of the fused 3-D expert parameters as its own matrix; other mixtures of experts are refused."""
    return {f"layers.{i}.{n}": lin for i, block in enumerate(decoder_layers(model))
            for n, lin in prunable_linears(block).items()}


def model_fingerprint(model: nn.Module) -> str:
    """A cheap identity of the weights (config + a sample of every prunable weight), for cache keys."""
    h = hashlib.sha1(model.config.to_json_string(use_diff=False).encode())
    for key, lin in all_prunable(model).items():
        w = lin.weight.detach()
        h.update(key.encode())
        h.update(w.flatten()[:: max(1, w.numel() // 257)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def block_device(block: nn.Module) -> torch.device:
    return next(block.parameters()).device


def structural_roles(model: nn.Module) -> Family:
    """The attention/MLP role names of a family structural pruning supports, else a one-line UserError."""
    fam = family(model)
    name = type(model).__name__
    if fam.structural:
        raise UserError(f"structural pruning does not support {name}: it {fam.structural}")
    block = decoder_layers(model)[0]
    for parent, names in (fam.attn, fam.mlp):
        for n in names:
            if not isinstance(getattr(getattr(block, parent, None), n, None), nn.Linear):
                raise UserError(f"structural pruning does not support {name}: its blocks have no Linear "
                                f"{parent}.{n} (it needs {'/'.join(fam.attn[1])} and {'/'.join(fam.mlp[1])})")
    return fam


def role(block: nn.Module, fam: Family, kind: str, index: int) -> nn.Linear:
    """``role(block, fam, "attn", 3)`` is the o projection; ``"mlp", 2`` the down projection."""
    parent, names = fam.attn if kind == "attn" else fam.mlp
    return getattr(getattr(block, parent), names[index])


def set_role(block: nn.Module, fam: Family, kind: str, index: int, lin: nn.Linear) -> None:
    parent, names = fam.attn if kind == "attn" else fam.mlp
    setattr(getattr(block, parent), names[index], lin)
