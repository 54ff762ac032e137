"""The Bernoulli policy over structures and its forward-only optimisation (Gao et al., ACL 2025).

One keep-probability per structure. A step samples K masks, computes each masked model's language-model loss on
a calibration batch without autograd, updates a moving-average baseline, forms the score-function (REINFORCE)
gradient, steps with a cosine learning-rate schedule and projects the probabilities back onto the budget (sum of
keep probabilities = keep ratio x count for each structure type, across all layers, by bisection on a shift), so
different layers end up with different sparsity. The result is a deterministic mask: global top-k of the
probabilities per type (at least one structure per layer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...errors import UserError
from .groups import ATTN, MLP, Layout, StructureMasks, layer_zscores

# how the policy's keep-probabilities start: metric scores, all equal, random, or oneshot (the metric's top scores
# taken as the final masks, no policy gradient)
STRUCTURAL_INITS = ("metric", "const", "random", "oneshot")


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
             batch_size: int = 4, progress: bool = True, every: int = 0,
             observe: Callable[[int, BernoulliPolicy], None] | None = None,
             hard: Callable[[BernoulliPolicy], dict[str, torch.Tensor]] | None = None) -> BernoulliPolicy:
    """Run the policy-gradient optimisation on calibration windows ``calib`` [N, T] (cycled in order).

    With ``every`` > 0, ``observe(step, policy)`` is called before the first step, after every ``every`` steps and
    after the last, while the model runs with the policy's hard masks (``hard(policy)``, default its global top-k)
    applied by the hooks: a forward inside ``observe`` is that of the model sliced at this step. Observing reads
    nothing the policy uses (no generator draw, no state), so the optimisation is the same with or without it.
    """
    policy = BernoulliPolicy(probs, cfg)
    hooks = StructureMasks(model)
    hard = hard or BernoulliPolicy.hard_masks

    def look(step: int) -> None:
        masks = hard(policy)
        hooks.set(masks[ATTN][None].float(), masks[MLP][None].float())
        try:
            observe(step, policy)
        finally:
            hooks.set(None, None)

    try:
        if every and observe:
            look(0)
        bar = tqdm(range(cfg.steps), desc="policy gradient", disable=not progress)
        for step in bar:
            start = (step * batch_size) % calib.shape[0]
            idx = torch.arange(start, start + batch_size) % calib.shape[0]
            loss = policy.step(lambda m: masked_losses(model, hooks, calib[idx], m))
            bar.set_postfix(loss=f"{loss:.3f}", baseline=f"{policy.state.baseline:.3f}")
            if every and observe and ((step + 1) % every == 0 or step + 1 == cfg.steps):
                look(step + 1)
    finally:
        hooks.remove()
    return policy




def uniform_widths(layout: Layout, keep: float) -> dict[str, int]:
    """Structures every layer keeps when all layers keep the same number, with the kept parameters as close as
    possible to ``keep`` x the prunable parameters.

    KV groups come in few per layer (3 on SmolLM2), so the group count is rounded first (at least one) and the MLP
    channel count absorbs the rest of the budget (at least one, at most all): at keep 0.8 on SmolLM2 that is 2 of 3
    groups and 1297 of 1536 channels per layer, 20.003% of the prunable parameters removed.
    """
    if not 0.0 < keep <= 1.0:
        raise UserError(f"keep ratio {keep} is outside (0, 1]")
    per_layer = layout.kv_heads * layout.attn_group_params + layout.intermediate * layout.mlp_channel_params
    groups = min(layout.kv_heads, max(1, round(keep * layout.kv_heads)))
    channels = round((keep * per_layer - groups * layout.attn_group_params) / layout.mlp_channel_params)
    return {ATTN: groups, MLP: min(layout.intermediate, max(1, channels))}


def uniform_keep(probs: dict[str, torch.Tensor], widths: dict[str, int]) -> dict[str, torch.Tensor]:
    """Per-layer top-k of keep-probabilities with the same k in every layer (ties: lower index first)."""
    out = {}
    for t, p in probs.items():
        order = torch.sort(-p, dim=1, stable=True).indices[:, : widths[t]]
        mask = torch.zeros(p.shape, dtype=torch.bool)
        mask.scatter_(1, order, True)
        out[t] = mask
    return out
