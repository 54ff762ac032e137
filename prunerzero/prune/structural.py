"""Structural pruning with a forward-only policy gradient (Gao et al., ACL 2025), seeded by a metric.

Structures: every KV-head group of every attention block (the k/v rows of one KV head, the q rows of the query
heads that share it under grouped-query attention, and the matching o_proj columns) and every MLP intermediate
channel (gate/up rows and the matching down_proj column). During optimisation the unmodified transformers model
is masked by forward pre-hooks that multiply the inputs of o_proj and down_proj (zeroing a group's o_proj input
is the same as removing the group; likewise for a channel's down_proj input).

Policy: one Bernoulli keep-probability per structure. A step samples K masks, computes each masked model's
language-model loss on a calibration batch without autograd, updates a moving-average baseline, forms the
score-function (REINFORCE) gradient, steps with a cosine learning-rate schedule and projects the probabilities
back onto the budget (sum of keep probabilities = keep ratio x count for each structure type, across all layers,
by bisection on a shift), so different layers end up with different sparsity.

The result is the deterministic mask (global top-k of the probabilities per type, at least one group and one
channel kept per layer); ``slice_model`` then builds physically smaller Linear layers and ``save_structural``
writes a folder that ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` loads (the per-layer
widths live in config.json; a 40-line modeling file resizes the layers before the weights load).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..calibration import Stats
from ..errors import UserError
from ..metric.expr import Node, evaluate
from ..models import decoder_layers, role, set_role, structural_roles

ATTN, MLP = "attn", "mlp"
REMOTE_CODE = Path(__file__).with_name("modeling_pruned_llama.py")


# ------------------------------------------------------------------------------------------------ structures
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


def project(p: torch.Tensor, total: float, iters: int = 100) -> torch.Tensor:
    """Shift-and-clamp projection onto {q in [0,1]^n : sum q = total}: q = clamp(p - tau, 0, 1), tau by bisection."""
    if not (0 <= total <= p.numel()):
        raise UserError(f"budget {total} is outside [0, {p.numel()}]")
    p64 = p.double()
    lo, hi = float(p64.min()) - 1.0, float(p64.max())  # sum(clamp(p - lo)) = n >= total >= 0 = sum(clamp(p - hi))
    for _ in range(iters):
        mid = (lo + hi) / 2
        if float((p64 - mid).clamp(0, 1).sum()) > total:
            lo = mid
        else:
            hi = mid
    return (p64 - (lo + hi) / 2).clamp(0, 1).to(p.dtype)


def init_probs(kind: str, keep: float, layout: Layout, scores: dict[str, torch.Tensor] | None = None,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """Keep-probabilities with mean ``keep`` per structure type: ``metric`` (z-score -> sigmoid -> shifted to
    the keep ratio -> clamped), ``const`` (all equal) or ``random``."""
    shapes = {ATTN: (layout.layers, layout.kv_heads), MLP: (layout.layers, layout.intermediate)}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t, shape in shapes.items():
        if kind == "const":
            p = torch.full(shape, keep, dtype=torch.float64)
        elif kind == "random":
            p = torch.rand(shape, generator=g, dtype=torch.float64)
        elif kind == "metric":
            if scores is None:
                raise UserError("metric initialisation needs structure scores")
            # per layer, as the reference's wanda-sp initialisation: z-score -> sigmoid -> shift to the keep ratio
            z = layer_zscores(scores[t])
            out[t] = torch.stack([project(torch.sigmoid(row), keep * row.numel()) for row in z])
            continue
        else:
            raise UserError(f"unknown initialisation '{kind}': use metric, const or random")
        out[t] = project(p.flatten(), keep * p.numel()).view(shape)
    return out


def layer_zscores(scores: torch.Tensor) -> torch.Tensor:
    """z-score of structure scores within each layer (row), so layers with large activations do not dominate."""
    s = scores.double()
    std = s.std(dim=1, keepdim=True) if s.shape[1] > 1 else torch.ones_like(s[:, :1])
    return (s - s.mean(dim=1, keepdim=True)) / std.clamp_min(1e-12)


def oneshot_masks(scores: dict[str, torch.Tensor], keep: float) -> dict[str, torch.Tensor]:
    """One-shot structure pruning by a metric: global top-k of the per-layer z-scored structure scores."""
    return {t: topk_keep(layer_zscores(s), keep) for t, s in scores.items()}


# ------------------------------------------------------------------------------------------------ estimator
def pg_gradient(masks: torch.Tensor, losses: torch.Tensor, p: torch.Tensor, baseline: float,
                normalized: bool = True) -> torch.Tensor:
    """Score-function gradient of E[loss] w.r.t. keep-probabilities ``p`` from K samples.

    masks [K, *p.shape] in {0,1}; d/dp log Bernoulli(m; p) = (m - p) / (p (1 - p)). ``normalized`` multiplies it by
    sqrt(p (1 - p)) (the Fisher-normalised direction the reference implementation uses). The sum is divided by
    K - 1: with the baseline taken as the mean of these K losses that is exactly unbiased.
    """
    k = masks.shape[0]
    var = (p * (1 - p)).clamp_min(1e-7)
    score = (masks - p) / (var.sqrt() if normalized else var)
    adv = (losses - baseline).view(k, *([1] * p.dim())).to(p.dtype)
    return (adv * score).sum(0) / max(1, k - 1)


def cosine_lr(lr: float, step: int, total: int) -> float:
    return 0.5 * lr * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


@dataclass
class PolicyConfig:
    keep: float                  # keep ratio per structure type
    steps: int = 200
    samples: int = 2             # K
    lr: float = 2e-3
    ma_window: int = 5
    normalized: bool = True
    seed: int = 0


@dataclass
class PolicyState:
    probs: dict[str, torch.Tensor]
    baseline: float | None = None
    step: int = 0
    history: list = field(default_factory=list)


class BernoulliPolicy:
    """The optimiser, independent of what a loss is: ``step(loss_fn)`` with loss_fn(masks) -> losses [K]."""

    def __init__(self, probs: dict[str, torch.Tensor], cfg: PolicyConfig):
        self.cfg = cfg
        self.state = PolicyState({k: v.clone().double() for k, v in probs.items()})
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def sample(self, k: int) -> dict[str, torch.Tensor]:
        return {t: torch.bernoulli(p.expand(k, *p.shape), generator=self.gen) for t, p in self.state.probs.items()}

    def step(self, loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> float:
        st, cfg = self.state, self.cfg
        masks = self.sample(cfg.samples)
        losses = loss_fn(masks).double()
        mean = float(losses.mean())
        lam = 1.0 / cfg.ma_window
        st.baseline = mean if st.baseline is None else (1 - lam) * st.baseline + lam * mean
        lr = cosine_lr(cfg.lr, st.step, cfg.steps)
        for t, p in st.probs.items():
            g = pg_gradient(masks[t], losses, p, st.baseline, cfg.normalized)
            st.probs[t] = project((p - lr * g).flatten(), cfg.keep * p.numel()).view(p.shape)
        st.step += 1
        st.history.append({"step": st.step, "loss": mean, "baseline": st.baseline, "lr": lr})
        return mean

    def hard_masks(self) -> dict[str, torch.Tensor]:
        return {t: topk_keep(p, self.cfg.keep) for t, p in self.state.probs.items()}


def topk_keep(p: torch.Tensor, keep: float) -> torch.Tensor:
    """Global top-k of keep-probabilities (ties: lower index first), at least one kept per layer (row)."""
    n = p.numel()
    k = max(p.shape[0], int(round(keep * n)))
    order = torch.sort(-p.flatten(), stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:k]] = True
    mask = mask.view(p.shape)
    for row in range(p.shape[0]):
        if not mask[row].any():  # give this layer its best structure, take the globally weakest spare one
            mask[row, int(torch.argmax(p[row]))] = True
            spare = [(float(p.view(-1)[i]), int(i)) for i in order[:k].flip(0).tolist()
                     if mask.view(-1)[i] and mask[i // p.shape[1]].sum() > 1]
            mask.view(-1)[spare[0][1]] = False
    return mask


# ------------------------------------------------------------------------------------------------ LM losses
@torch.no_grad()
def masked_losses(model: nn.Module, hooks: StructureMasks, ids: torch.Tensor, masks: dict[str, torch.Tensor]
                  ) -> torch.Tensor:
    """Language-model loss of each sampled mask on the same batch ``ids`` [B, T] (one forward of K*B rows)."""
    k = next(iter(masks.values())).shape[0]
    dev = model.get_input_embeddings().weight.device
    hooks.set(masks[ATTN].to(dev), masks[MLP].to(dev))
    try:
        batch = ids.to(dev).repeat(k, 1)
        logits = model(batch, use_cache=False).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                               reduction="none").view(k, -1)
    finally:
        hooks.set(None, None)
    return loss.mean(1).cpu()


def optimise(model: nn.Module, probs: dict[str, torch.Tensor], cfg: PolicyConfig, calib: torch.Tensor,
             batch_size: int = 4, progress: bool = True) -> BernoulliPolicy:
    """Run the policy-gradient optimisation on calibration windows ``calib`` [N, T] (cycled in order)."""
    policy = BernoulliPolicy(probs, cfg)
    hooks = StructureMasks(model)
    try:
        bar = tqdm(range(cfg.steps), desc="policy gradient", disable=not progress)
        for step in bar:
            start = (step * batch_size) % calib.shape[0]
            idx = torch.arange(start, start + batch_size) % calib.shape[0]
            loss = policy.step(lambda m: masked_losses(model, hooks, calib[idx], m))
            bar.set_postfix(loss=f"{loss:.3f}", baseline=f"{policy.state.baseline:.3f}")
    finally:
        hooks.remove()
    return policy


# ------------------------------------------------------------------------------------------------ slicing
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


def save_structural(model: nn.Module, tokenizer, folder: str | Path) -> None:
    """save_pretrained plus the per-layer widths and the modeling file that restores them on load."""
    from ..fsutil import atomic_folder

    if type(model).__name__ != "LlamaForCausalLM":
        raise UserError(f"saving a structurally pruned {type(model).__name__} is not supported yet: LLaMA only")
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg.update(model_type="pruned_llama", architectures=["PrunedLlamaForCausalLM"],
                   layer_shapes=model.config.layer_shapes,
                   auto_map={"AutoConfig": "modeling_pruned_llama.PrunedLlamaConfig",
                             "AutoModelForCausalLM": "modeling_pruned_llama.PrunedLlamaForCausalLM"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        shutil.copy(REMOTE_CODE, tmp / REMOTE_CODE.name)


def count_params(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    fam = structural_roles(model)
    prunable = sum(role(layer, fam, kind, j).weight.numel() for layer in decoder_layers(model)
                   for kind, n in ((ATTN, 4), (MLP, 3)) for j in range(n))
    return {"total": total, "prunable": prunable}


@torch.no_grad()
def forward_latency(model: nn.Module, seqlen: int, batch: int = 1, repeats: int = 3) -> float:
    """Median seconds of one forward pass on random tokens [batch, seqlen]."""
    dev = model.get_input_embeddings().weight.device
    ids = torch.randint(0, model.config.vocab_size, (batch, seqlen), device=dev)
    times = []
    for _ in range(repeats + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model(ids, use_cache=False)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[len(times[1:]) // 2]
