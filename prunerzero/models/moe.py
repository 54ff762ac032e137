"""Mixtures of experts: the family adapter table, and every expert's slice of the fused expert parameters as a
prunable matrix.

In transformers 5 the routed experts of a decoder layer live in one module (``mlp.experts``) holding two fused
3-D parameters, ``gate_up_proj`` and ``down_proj``, one slice per expert; the module is called with the tokens, the
router's top-k expert ids and their gate weights, and chooses its kernel through transformers' experts interface
(an eager loop, batched or grouped matmuls). Nothing there is an ``nn.Linear``, so code that looks for Linears
misses the experts (most of an MoE's weights) without a word.

``expert_linears`` gives every expert's slice as an ``nn.Linear`` whose weight *is* that slice (a view sharing the
fused parameter's storage, in Linear orientation ``[out, in]``): masks, exact counts, SparseGPT/OBS/ADMM updates
written into the view land in the fused parameter, so the model is pruned in place and saves as the stock
checkpoint it was (no unfusing). The views are never called: their statistics come from the experts module's
own inputs (``calibration.experts``), their gradients from the fused parameter's gradient
(``calibration.gradients``). Routers stay dense; shared experts (Qwen2-MoE, DeepSeek-V3, GLM-4.5) are ordinary
Linears and are pruned as such.

A family is supported when it is in ``MOE_FAMILIES``; a mixture of experts of any other family is refused in one
line, from its config, before any weight is read (``check_moe_config``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import UserError

FUSED = ("gate_up_proj", "down_proj")  # the fused expert matrices, in the order an expert applies them


@dataclass(frozen=True)
class MoeFamily:
    """What prunerzero must know about one MoE family of transformers 5.

    ``transposed``: the fused parameters are stored ``[experts, in, out]`` (gpt-oss) instead of ``[experts, out,
    in]``; ``bias``: each fused matrix has a ``{name}_bias`` of shape ``[experts, out]``. ``count``: the config
    field that holds the number of routed experts (the one expert pruning rewrites); ``router``: the MoE module's
    router attribute, whose ``expert_rows`` tensors have one row (or entry) per expert. ``shared``: names of the
    shared-expert modules (plain MLPs of Linears, pruned like any Linear). ``grouped``: routing first picks groups
    of experts (DeepSeek-V3 / GLM-4.5 ``n_group``), so removing experts must keep the groups equal in size.
    """

    count: str
    router: str = "gate"
    expert_rows: tuple[str, ...] = ("weight",)
    transposed: bool = False
    bias: bool = False
    shared: tuple[str, ...] = ()
    grouped: bool = False
    moe_module: str = "mlp"


MOE_FAMILIES: dict[str, MoeFamily] = {
    "mixtral": MoeFamily(count="num_local_experts"),
    "qwen2_moe": MoeFamily(count="num_experts", shared=("shared_expert",)),
    "qwen3_moe": MoeFamily(count="num_experts"),
    "olmoe": MoeFamily(count="num_experts"),
    "deepseek_v3": MoeFamily(count="n_routed_experts", expert_rows=("weight", "e_score_correction_bias"),
                             shared=("shared_experts",), grouped=True),
    "glm4_moe": MoeFamily(count="n_routed_experts", expert_rows=("weight", "e_score_correction_bias"),
                          shared=("shared_experts",), grouped=True),
    "gpt_oss": MoeFamily(count="num_local_experts", router="router", expert_rows=("weight", "bias"),
                         transposed=True, bias=True),
}
# Config fields that mark a mixture of experts.
MOE_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts")


def expert_count_of(cfg) -> int | None:
    """The number of routed experts a config declares, or None for a dense model."""
    for f in MOE_FIELDS:
        n = getattr(cfg, f, None)
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


def moe_family(cfg) -> MoeFamily | None:
    """The adapter of an MoE config's family; None for a dense config; a one-line refusal for an MoE family that
    is not in the table."""
    n = expert_count_of(cfg)
    if n is None:
        return None
    kind = getattr(cfg, "model_type", None)
    if kind not in MOE_FAMILIES:
        archs = getattr(cfg, "architectures", None)
        name = archs[0] if archs else str(kind)
        raise UserError(f"architecture {name} is a mixture of experts ({n} experts, model_type {kind}) that "
                        f"prunerzero has no adapter for: supported MoE families are {', '.join(MOE_FAMILIES)}")
    return MOE_FAMILIES[kind]


def config_of(model: str, cache=None):
    """The config of a model named on the command line, read without loading weights (None if not readable, and
    for the built-ins and GGUF files, which are dense: a GGUF mixture of experts is refused when it loads)."""
    from transformers import AutoConfig

    from .builtins import BUILTIN_MODELS
    from .loading import resolve_model_source

    if model in BUILTIN_MODELS or model.endswith(".gguf"):
        return None
    try:
        return AutoConfig.from_pretrained(resolve_model_source(model, cache))
    except (OSError, ValueError):
        return None


def check_moe_config(cfg) -> None:
    """Refuse, from the config alone, a mixture of experts of a family the adapter table does not know."""
    moe_family(cfg)


@dataclass(frozen=True)
class ExpertSlice:
    """Where an expert view's weight lives: ``experts.{name}[expert]`` (transposed for ``[E, in, out]``)."""

    experts: nn.Module
    name: str
    expert: int
    transposed: bool

    @property
    def fused(self) -> nn.Parameter:
        return getattr(self.experts, self.name)

    def of(self, fused: torch.Tensor) -> torch.Tensor:
        """This expert's slice of a tensor shaped like the fused parameter (e.g. its gradient), as [out, in]."""
        return fused[self.expert].t() if self.transposed else fused[self.expert]

    @property
    def bias(self) -> torch.Tensor | None:
        b = getattr(self.experts, f"{self.name}_bias", None)
        return None if b is None else b.detach()[self.expert]


def is_experts_module(mod: nn.Module) -> bool:
    """A transformers 5 fused-experts module of a family in the adapter table."""
    cfg = getattr(mod, "config", None)
    return (all(isinstance(getattr(mod, n, None), nn.Parameter) and getattr(mod, n).dim() == 3 for n in FUSED)
            and getattr(cfg, "model_type", None) in MOE_FAMILIES)


def _view(experts: nn.Module, name: str, e: int, transposed: bool) -> nn.Linear:
    fused = getattr(experts, name).detach()  # shares storage with the parameter; no autograd history
    w = fused[e].t() if transposed else fused[e]
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    lin.weight = nn.Parameter(w, requires_grad=False)
    lin.expert = ExpertSlice(experts, name, e, transposed)  # plain attribute (not a submodule)
    return lin


def expert_linears(name: str, experts: nn.Module) -> dict[str, nn.Linear]:
    """Every expert's two matrices as views keyed ``{name}.{e}.gate_up_proj`` / ``{name}.{e}.down_proj``."""
    fam = MOE_FAMILIES[experts.config.model_type]
    n = getattr(experts, FUSED[0]).shape[0]
    return {f"{name}.{e}.{p}": _view(experts, p, e, fam.transposed) for e in range(n) for p in FUSED}


def expert_slice(lin: nn.Module) -> ExpertSlice | None:
    """The fused slice behind an expert view, or None for an ordinary Linear."""
    return getattr(lin, "expert", None) if isinstance(getattr(lin, "expert", None), ExpertSlice) else None


def experts_modules(block: nn.Module) -> dict[str, nn.Module]:
    """The fused-experts modules of one decoder block by name (empty for a dense block)."""
    return {n: m for n, m in block.named_modules() if is_experts_module(m)}


def router_of(experts: nn.Module, block: nn.Module, experts_name: str) -> nn.Module:
    """The router beside an experts module (the MoE module's ``gate`` or ``router``)."""
    fam = MOE_FAMILIES[experts.config.model_type]
    parent = block.get_submodule(experts_name.rsplit(".", 1)[0]) if "." in experts_name else block
    return getattr(parent, fam.router)
