"""Routed calibration: each expert's input statistics from the tokens its router sends to it.

An expert of a mixture of experts sees only the tokens routed to it, so Wanda's X and SparseGPT's Hessian of
expert e must come from those tokens, not from every token (an expert's view Linear is never called: see
``moe.py``). ``RoutedInputs`` is a forward hook on a fused-experts module: every call records the tokens entering
the module and the router's top-k expert ids and gate weights (whatever kernel transformers' experts interface
picks, those three are its arguments); ``finish`` then computes, per expert, its matrices' inputs exactly as the
expert computes them (``gate_up_proj``'s input is the routed token; ``down_proj``'s is the module's own
``_apply_gate`` of the gate/up projection, bias included) and folds them into ``InputStats``-like accumulators.

Normalisation as for dense layers (Wanda's ``scaler_row``): X = sum over the expert's tokens of x^2 divided by the
number of calibration *sequences*, H = 2 / sequences * sum x x^T; so an expert that sees few tokens has a small
X, as a rarely used Linear would.

**Fallback.** An expert that receives fewer than ``min_tokens`` calibration tokens (``MIN_TOKENS`` unless told)
has statistics too thin to rank its weights or to invert its Hessian; it is calibrated on *every* calibration
token instead (as ``routing="all"`` does for all experts), and it is counted: ``RoutedStats.fallback`` names it
and every run reports how many experts took the fallback. An expert is never skipped.

``routing="all"`` calibrates every expert on every token (llm-compressor's "calibrate all experts"), whatever
the router chose. Per expert the routing itself is recorded too: ``tokens`` (how many tokens it got), ``gate``
(sum of its gate weights over them), ``out_norm`` (sum of its output norms ||f_e(x)||) and ``reap`` (sum of gate x
output norm: REAP's numerator), so expert-level scores (``prune.experts``) come from the same pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.moe import FUSED, MOE_FAMILIES

MIN_TOKENS = 16          # fewer routed calibration tokens than this: the expert takes the all-token fallback
ROUTINGS = ("routed", "all")


class _Acc:
    """X and optionally the Hessian of one matrix's inputs (InputStats' interface: ``X``, ``H``, ``nsamples``)."""

    def __init__(self, cols: int, hessian: bool, device):
        self.sumsq = torch.zeros(cols, dtype=torch.float64, device=device)
        self.H = torch.zeros(cols, cols, dtype=torch.float32, device=device) if hessian else None
        self.nsamples = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.float()
        self.sumsq += (x.double() ** 2).sum(dim=0)
        if self.H is not None:
            self.H += x.t() @ x

    def close(self, sequences: int) -> None:
        self.nsamples = sequences
        if self.H is not None:
            self.H *= 2.0 / max(1, sequences)

    @property
    def X(self) -> torch.Tensor:
        return (self.sumsq / max(1, self.nsamples)).float()

    def remove(self) -> None:
        pass


@dataclass
class RoutedStats:
    """What routed calibration learnt about one experts module: per expert, its token count, gate and output
    sums, and which experts took the all-token fallback."""
    tokens: torch.Tensor            # [E] routed calibration tokens per expert
    gate: torch.Tensor              # [E] sum of gate weights over routed tokens
    out_norm: torch.Tensor          # [E] sum of ||expert output|| over routed tokens
    reap: torch.Tensor              # [E] sum of gate x ||expert output|| over routed tokens
    total_tokens: int
    fallback: list[int] = field(default_factory=list)


def _call_args(args, kwargs):
    names = ("hidden_states", "top_k_index", "top_k_weights")
    alt = {"top_k_index": ("router_indices", "topk_indices"), "top_k_weights": ("routing_weights", "topk_weights")}
    out = list(args[:3])
    for name in names[len(out):]:
        for k in (name, *alt.get(name, ())):
            if k in kwargs:
                out.append(kwargs[k])
                break
    return out


class RoutedInputs:
    """Forward hook on one fused-experts module; ``finish(sequences)`` gives every expert's two accumulators."""

    def __init__(self, experts: nn.Module, hessian: bool = False, routing: str = "routed",
                 min_tokens: int = MIN_TOKENS):
        if routing not in ROUTINGS:
            raise ValueError(f"routing {routing!r}: use one of {ROUTINGS}")
        self.experts, self.hessian, self.routing, self.min_tokens = experts, hessian, routing, min_tokens
        self.transposed = MOE_FAMILIES[experts.config.model_type].transposed
        self.records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.acc: dict[tuple[int, str], _Acc] = {}
        self.routed: RoutedStats | None = None
        self.handle = experts.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, args, kwargs, _output):
        hidden, index, weights = _call_args(args, kwargs)
        self.records.append((hidden.detach().reshape(-1, hidden.shape[-1]), index.detach(), weights.detach()))

    def remove(self) -> None:
        self.handle.remove()

    def _weight(self, name: str, e: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = getattr(self.experts, name).detach()[e]
        b = getattr(self.experts, f"{name}_bias", None)
        return (w.t() if self.transposed else w), (None if b is None else b.detach()[e])

    def expert_forward(self, e: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert e on tokens ``x``: (the input of its down_proj, its output), in the model's dtype."""
        w1, b1 = self._weight(FUSED[0], e)
        w2, b2 = self._weight(FUSED[1], e)
        h = self.experts._apply_gate(F.linear(x.to(w1.dtype), w1, b1))
        return h, F.linear(h, w2, b2)

    @torch.no_grad()
    def finish(self, sequences: int) -> RoutedStats:
        """Fold the recorded calls into per-expert statistics (``acc[(e, name)]``); frees the records."""
        n = getattr(self.experts, FUSED[0]).shape[0]
        dev = getattr(self.experts, FUSED[0]).device
        tokens = torch.zeros(n, dtype=torch.long)
        gate, out_norm, reap = (torch.zeros(n, dtype=torch.float64) for _ in range(3))
        total = sum(h.shape[0] for h, _, _ in self.records)
        fallback = []
        for e in range(n):
            routed = [((idx == e).any(-1), ((idx == e) * w).sum(-1)) for _, idx, w in self.records]
            tokens[e] = int(sum(int(r.sum()) for r, _ in routed))
            use_all = self.routing == "all" or int(tokens[e]) < self.min_tokens
            if self.routing == "routed" and use_all:
                fallback.append(e)
            w1, _ = self._weight(FUSED[0], e)
            w2, _ = self._weight(FUSED[1], e)
            a1, a2 = _Acc(w1.shape[1], self.hessian, dev), _Acc(w2.shape[1], self.hessian, dev)
            for (hidden, _, _), (r, g) in zip(self.records, routed):
                x = hidden if use_all else hidden[r]
                if x.shape[0] == 0:
                    continue
                h, out = self.expert_forward(e, x)
                a1.add(x)
                a2.add(h)
                norms = out.float().norm(dim=-1)
                if use_all:
                    norms = norms[r]
                gr = g[r].float()
                gate[e] += gr.sum().item()
                out_norm[e] += norms.sum().item()
                reap[e] += (gr * norms).sum().item()
            a1.close(sequences)
            a2.close(sequences)
            self.acc[(e, FUSED[0])], self.acc[(e, FUSED[1])] = a1, a2
        self.records = []
        self.routed = RoutedStats(tokens, gate, out_norm, reap, total, fallback)
        return self.routed


class BlockInputs:
    """The input statistics of every prunable matrix of one block for one pass of the block runner: an
    ``InputStats`` hook on every Linear, a ``RoutedInputs`` hook on every fused-experts module (one accumulator
    per expert view). ``finish(sequences)`` after the pass; then ``stats[name]`` has ``X``, ``H``, ``nsamples``."""

    def __init__(self, linears: dict[str, nn.Linear], hessian: bool = False, routing: str = "routed",
                 min_tokens: int = MIN_TOKENS):
        from ..models.moe import expert_slice
        from .activations import InputStats

        self.stats: dict[str, object] = {}
        self.modules: dict[int, RoutedInputs] = {}
        self._experts: dict[str, tuple[int, int, str]] = {}
        for name, lin in linears.items():
            sl = expert_slice(lin)
            if sl is None:
                self.stats[name] = InputStats(lin, hessian=hessian)
                continue
            if id(sl.experts) not in self.modules:
                self.modules[id(sl.experts)] = RoutedInputs(sl.experts, hessian, routing, min_tokens)
            self._experts[name] = (id(sl.experts), sl.expert, sl.name)

    def remove(self) -> None:
        for s in self.stats.values():
            s.remove()
        for m in self.modules.values():
            m.remove()

    def finish(self, sequences: int) -> dict[str, RoutedStats]:
        """Remove the hooks, compute every expert's statistics; returns the routing of each experts module, keyed
        by the name of its first expert view's prefix (``mlp.experts``)."""
        self.remove()
        routed = {}
        for m in self.modules.values():
            m.finish(sequences)
        for name, (mid, e, which) in self._experts.items():
            self.stats[name] = self.modules[mid].acc[(e, which)]
            routed.setdefault(name.rsplit(".", 2)[0], self.modules[mid].routed)
        return routed

    def free(self, name: str) -> None:
        self.stats[name].H = None
