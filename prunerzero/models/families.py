"""What prunerzero must know about a model family beyond "decoder blocks holding nn.Linear layers".

Everything else is found generically (``blocks.py``). Roles are the Linear names structural pruning needs: attention
q/k/v/o under ``attn`` and MLP gate/up/down under ``mlp``; ``structural`` is None where structural pruning works,
else the one-line reason it cannot.
"""
from __future__ import annotations

from dataclasses import dataclass

LLAMA_ATTN = ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj"))
LLAMA_MLP = ("mlp", ("gate_proj", "up_proj", "down_proj"))
ATTN_PROJ, MLP_PROJ = LLAMA_ATTN[1], LLAMA_MLP[1]
ROUTERS = ("gate", "router", "shared_expert_gate")  # MoE routers: Linear or not, always left dense


@dataclass(frozen=True)
class Family:
    attn: tuple[str, tuple[str, ...]] = LLAMA_ATTN
    mlp: tuple[str, tuple[str, ...]] = LLAMA_MLP
    structural: str | None = None
    # trained with BOS opening every sequence, and far off without it: protocol bos 'window' is this family's own
    # regime (Gemma 3 270M, 8 WikiText-2 test windows of 512 tokens: ppl 63.68 as Wanda cuts them, 24.79 with BOS)
    needs_bos: bool = False


_FUSED = "fuses q/k/v into qkv_proj and gate/up into gate_up_proj; structural pruning needs them separate"
_MOE = "is a mixture of experts; prunerzero has no structures for experts"
FAMILIES = {
    **{t: Family() for t in ("llama", "mistral", "qwen2", "qwen3")},
    **{t: Family(needs_bos=True) for t in ("gemma", "gemma2", "gemma3_text")},
    "olmo2": Family(structural="normalises q and k over all heads at once (q_norm, k_norm), so removing a head "
                               "changes the others"),
    "phi3": Family(structural=_FUSED),
    # prunerzero's per-layer-width LLaMA (structural --save, per-layer GGUF): prunable like LLaMA; its layers differ
    # in width, and the structural stage assumes one layout for all
    "pruned_llama": Family(structural="already has per-layer widths (structural pruning needs one layout for all "
                                      "layers: prune the dense model instead)"),
    "mixtral": Family(structural=_MOE),
    "qwen2_moe": Family(structural=_MOE),
    "qwen3_moe": Family(structural=_MOE),
}


def family(model_or_config) -> Family:
    """The adapter entry of a model's family. Unknown families prune like any other (their Linears are found),
    but structural pruning refuses them: its structures were checked only on the families in the table."""
    cfg = getattr(model_or_config, "config", model_or_config)
    kind = getattr(cfg, "model_type", None)
    if kind in FAMILIES:
        return FAMILIES[kind]
    tested = ", ".join(k for k, f in FAMILIES.items() if f.structural is None)
    return Family(structural=f"is not among the families it was tested on (model_type {kind}; tested: {tested})")
