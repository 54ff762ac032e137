"""N:M pruning with input-channel permutation (after RIA, Zhang et al. 2024 "Plug-and-Play", Sec. 3.3).

N:M keeps the M − N best of every M *consecutive* inputs. Reordering the inputs first lets large scores that
would compete in one group land in different groups, so more score mass is kept. The heuristic (our own code):
deal the channels, sorted by their total score, over the K = in/M groups in snake order (balanced groups);
then refine slot by slot (for slot j, the j-th channel of every group is reassigned
to the groups by pairwise exchanges while the kept mass grows); the identity is kept if it is not beaten.

**What a saved model can hold.** A kernel that runs 2:4 needs the pattern in the layout the weights are stored
in, so the permutation must be *applied*, not only used to choose the mask: the layer's input columns are
reordered and so are the rows of the layer that produces that input, which leaves the model's function unchanged
(up to float summation order). In a LLaMA block that is possible for two layers:

* ``mlp.down_proj``: its input is act(gate(x)) * up(x), elementwise per intermediate channel, so any permutation
  of down_proj's columns is matched by the same permutation of the rows of gate_proj and up_proj;
* ``self_attn.o_proj``: its input is the attention output, head h's channel d = Σ attention × V[kv(h), d]. Rows
  of v_proj can be permuted *within* each KV head (V has no rotary embedding), which permutes the channels of every
  query head that reads that KV head alike; so o_proj's columns get one within-head permutation per KV group,
  shared by the group's query heads (chosen on their scores together).

q/k/v/gate/up read the residual stream (after RMSNorm), which every block shares: their inputs cannot be
permuted per layer, so they are pruned N:M without permutation. The saved model is plain transformers: every
pruned Linear is a valid N:M in the order it is stored in.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from .masks import Pattern, mask_from_scores

PERMUTABLE = ("self_attn.o_proj", "mlp.down_proj")


def kept_mass(score: torch.Tensor, pattern: Pattern) -> float:
    """Sum of the scores N:M keeps (in the given column order)."""
    return float((score.double() * ~mask_from_scores(score, pattern)).sum())


def _best_swaps(gain: torch.Tensor, max_swaps: int | None = None) -> torch.Tensor:
    """Assignment of candidates to groups (start: identity) improved by the best pairwise exchange, repeatedly,
    until none gains: a local optimum of sum_g gain[assign[g], g] (RIA solves this step as a linear sum
    assignment; exchanges need no solver and reach the same optimum or one close to it)."""
    K = gain.shape[0]
    assign = torch.arange(K, device=gain.device)
    for _ in range(max_swaps or 4 * K):
        P = gain[assign]                                   # P[g, h]: group g's current candidate placed in h
        d = torch.diagonal(P)
        delta = P + P.t() - d[:, None] - d[None, :]        # exchange the candidates of groups a and b
        best = int(torch.argmax(delta))
        a, b = divmod(best, K)
        if float(delta[a, b]) <= 1e-12 * float(d.abs().sum()):
            break
        assign[[a, b]] = assign[[b, a]]
    return assign


@torch.no_grad()
def find_permutation(score: torch.Tensor, pattern: Pattern, rounds: int = 2) -> torch.Tensor:
    """A column order (LongTensor, new position -> old column) under which N:M keeps more of ``score``."""
    if not pattern.is_nm:
        raise UserError("channel permutation is for N:M patterns: pass --pattern N:M")
    S = score.detach().double()
    rows, cols = S.shape
    m, keep = pattern.m, pattern.m - pattern.n
    if cols % m:
        raise UserError(f"N:M with M={m} needs the input size ({cols}) to be a multiple of M")
    K = cols // m
    identity = torch.arange(cols, device=S.device)
    if K == 1:
        return identity
    # 1) balanced allocation: channels by total score, dealt in snake order over the K groups
    order = torch.sort(S.sum(0), descending=True, stable=True).indices
    groups = [[] for _ in range(K)]
    for i, ch in enumerate(order.tolist()):
        r, j = divmod(i, K)
        groups[j if r % 2 == 0 else K - 1 - j].append(ch)
    G = torch.tensor(groups, device=S.device)            # [K, m]
    # 2) refinement: slot by slot, reassign the slot's channels over the groups (pairwise exchanges)
    for _ in range(rounds):
        improved = False
        for j in range(m):
            others = torch.cat([G[:, :j], G[:, j + 1:]], dim=1)      # [K, m-1]
            # kept(group g with candidate c) per row = top-(keep-1) of g's others + max(c, their keep-th value)
            base = S[:, others].permute(1, 0, 2).sort(dim=-1, descending=True).values   # [K, rows, m-1]
            top = base[..., :keep - 1].sum(dim=(-1, -2))                               # [K]
            kth = base[..., keep - 1]                                                   # [K, rows]
            cand = S[:, G[:, j]].t()                                                    # [K(candidate), rows]
            gain = torch.empty(K, K, dtype=torch.float64, device=S.device)
            chunk = max(1, int(2 ** 23 // max(1, K * rows)))
            for c0 in range(0, K, chunk):
                c = cand[c0:c0 + chunk]
                gain[c0:c0 + chunk] = top[None, :] + torch.maximum(c[:, None, :], kth[None]).sum(-1)
            assign = _best_swaps(gain)            # group g takes the slot-j channel of group assign[g]
            if not torch.equal(assign, torch.arange(K, device=S.device)):
                G[:, j] = G[assign, j]
                improved = True
        if not improved:
            break
    perm = G.reshape(-1)
    return perm if kept_mass(S[:, perm], pattern) > kept_mass(S, pattern) else identity


def attention_shape(config) -> tuple[int, int, int]:
    """(query heads, KV heads, head dim) of a LLaMA-style attention."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    hd = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv, hd


@torch.no_grad()
def o_proj_permutation(score: torch.Tensor, pattern: Pattern, config) -> tuple[torch.Tensor, torch.Tensor]:
    """(o_proj column order, v_proj row order): one within-head permutation per KV head."""
    heads, kv, hd = attention_shape(config)
    if score.shape[1] != heads * hd:
        raise UserError(f"o_proj input {score.shape[1]} is not heads x head_dim = {heads} x {hd}")
    if hd % pattern.m:
        return torch.arange(heads * hd, device=score.device), torch.arange(kv * hd, device=score.device)
    rep = heads // kv
    cols, vrows = [], []
    for g in range(kv):
        hs = range(g * rep, (g + 1) * rep)
        joint = torch.cat([score[:, h * hd:(h + 1) * hd] for h in hs], dim=0)   # rows of every head, same d
        pi = find_permutation(joint, pattern)
        vrows.append(g * hd + pi)
        cols.extend(h * hd + pi for h in hs)
    return torch.cat(cols), torch.cat(vrows)


def permutation_for(name: str, score: torch.Tensor, pattern: Pattern, config) -> tuple[torch.Tensor, dict] | None:
    """(column order of layer ``name``, {producer name: its row order}), or None where no permutation is sound."""
    if name == "mlp.down_proj":
        perm = find_permutation(score, pattern)
        return perm, {"mlp.gate_proj": perm, "mlp.up_proj": perm}
    if name == "self_attn.o_proj":
        cols, vrows = o_proj_permutation(score, pattern, config)
        return cols, {"self_attn.v_proj": vrows}
    return None


@torch.no_grad()
def permute_rows(lin: nn.Linear, order: torch.Tensor) -> None:
    order = order.to(lin.weight.device)
    lin.weight.copy_(lin.weight[order])
    if lin.bias is not None:
        lin.bias.copy_(lin.bias[order])


__all__ = ["PERMUTABLE", "attention_shape", "find_permutation", "kept_mass", "o_proj_permutation",
           "permutation_for", "permute_rows"]
