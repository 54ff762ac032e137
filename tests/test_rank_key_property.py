"""Property test of the ranking key on REAL SmolLM2 statistics: equal keys => identical masks, every pattern.

Formulas: random trees of the Pruner-Zero space (W, X, G; abs, neg, sqr, sqrt, log, exp, tanh, sigmoid, mms, zsn,
identity; add, sub, mul, div) and of the extended space (+ rown, coln, G1), each with

* exact variants (commuted operands, ``neg(neg(.))``, ``identity``, ``sub`` <-> ``add(., neg(.))``, signs moved
  through ``mul``/``div``, ``abs``/``neg`` under sqrt/log/sqr/abs, ``mul(x, x)`` <-> ``sqr(x)``, ``G2`` for G, ...):
  these must share the base formula's key, so most groups are not singletons;
* dangerous variants (root maps that are increasing only in exact arithmetic: tanh, sigmoid, exp, sqrt, sqr, mms,
  zsn, log, a norm factor; ``log(exp(.))``, ``sqrt(sqr(.))``; ``div`` wrappers whose norm depends on the broadcast
  shape). The old sympy key merged these with the base; the test checks that many of them really give different
  masks on real statistics (so a key that merged them fails here), and all of them are grouped by key like the rest.

Every non-singleton key group is evaluated on real layers and every member's masks (50% per row, 50% per layer,
2:4, 4:8; stable lowest-index tie order; ties are NOT skipped: SmolLM2 is Q4_1-quantised, so W ties a lot) must be
identical; the scores themselves must be equal elementwise (IEEE ``==``, NaN in the same places), which is the
contract ``metric.simplify`` documents.

Statistics come from the real calibration path (``pipeline.one_shot_stats``, C4 windows, X and G of the dense
model) with 2 windows of 128 tokens, to keep the cold-start cost small (gradients on 2 CPU cores). X is a sum over
tokens per sequence, so it is 2048/128 = 16 times smaller than in the real protocol (128 windows of 2048 tokens);
G (an l2 sum over sequences) is about sqrt(128/2) = 8 times smaller, G1 (an l1 sum) 64 times. Every check runs at
both scales: the statistics as computed, and multiplied by exactly 16 (X), 8 (G) and 64 (G1), powers of two and so
exact in float32, which puts X, G, G1 at the real protocol's scale (where tanh/sigmoid saturate and exp clamps).
"""
from __future__ import annotations

import hashlib
import random
import time

import pytest
import torch
from test_metric import same_values

from prunerzero import data
from prunerzero.metric import evaluate, parse, rank_key
from prunerzero.metric.expr import Node
from prunerzero.metric.simplify import is_nonneg
from prunerzero.pipeline import CalibConfig, one_shot_stats
from prunerzero.prune.masks import Pattern, mask_from_scores
from prunerzero.search.space import validate
from prunerzero.search.toolbox import build_pset, build_toolbox

NSAMPLES, SEQLEN, REAL_SEQLEN, REAL_NSAMPLES = 2, 128, 2048, 128
LAYERS = ["layers.0.self_attn.q_proj", "layers.9.self_attn.o_proj", "layers.20.mlp.down_proj"]
PATTERNS = [Pattern(0.5, "row"), Pattern(0.5, "layer"), Pattern(n=2, m=4), Pattern(n=4, m=8)]
PAPER = {"terminals": ["W", "X", "G"], "binary": ["add", "sub", "mul", "div"],
         "unary": ["abs", "neg", "sqr", "sqrt", "log", "exp", "tanh", "sigmoid", "mms", "zsn", "identity"]}
EXTENDED = {**PAPER, "terminals": ["W", "X", "G", "G1"], "unary": PAPER["unary"] + ["rown", "coln"]}


@pytest.fixture(scope="module")
def real_layers(smollm2):
    """(name, env) of the real layers, as computed and at the real protocol's scale (exact powers of two)."""
    windows = data.calibration_windows(smollm2.tokenizer, NSAMPLES, SEQLEN, 0)
    stats = one_shot_stats(smollm2, CalibConfig(NSAMPLES, 0, 1), windows=windows, progress=False)
    modules = dict(smollm2.model.named_modules())
    up = {"X": REAL_SEQLEN // SEQLEN, "G": 8, "G2": 8, "G1": REAL_NSAMPLES // NSAMPLES}
    out = []
    for key in LAYERS:
        env = stats.env(key, modules[f"model.{key}"].weight)
        out.append((key, env))
        out.append((f"{key} x real scale", {t: v * up[t] if t in up else v for t, v in env.items()}))
    return out


def row_slice(env: dict, rows: int) -> dict:
    """The first ``rows`` output rows of a layer (real values; X is per input feature and stays whole)."""
    return {t: v if v.shape[0] == 1 else v[:rows] for t, v in env.items()}


# --------------------------------------------------------------------------------------------- formulas
def _rebuild(n: Node, children) -> Node:
    return Node(n.op, tuple(children)) if n.children else n


def exact_variant(n: Node, rng: random.Random, p: float = 0.35) -> Node:
    """An equal-valued variant of ``n``: exact float32 rewrites applied at random nodes."""
    n = _rebuild(n, [exact_variant(c, rng, p) for c in n.children])
    if rng.random() > p:
        return n
    op, ch = n.op, n.children
    options = [lambda: Node("neg", (Node("neg", (n,)),)), lambda: Node("identity", (n,))]
    if op in ("add", "mul"):
        options.append(lambda: Node(op, ch[::-1]))
    if op == "sub":
        options += [lambda: Node("add", (ch[0], Node("neg", (ch[1],)))),
                    lambda: Node("neg", (Node("sub", (ch[1], ch[0])),))]
    if op == "add":
        options.append(lambda: Node("neg", (Node("add", (Node("neg", (ch[0],)), Node("neg", (ch[1],)))),)))
    if op == "mul":
        options += [lambda: Node("mul", (Node("neg", (ch[0],)), Node("neg", (ch[1],)))),
                    lambda: Node("neg", (Node("mul", (Node("neg", (ch[0],)), ch[1])),))]
        if ch[0] == ch[1]:
            options.append(lambda: Node("sqr", (ch[0],)))
    if op == "div":
        options += [lambda: Node("div", (ch[0], Node(rng.choice(["neg", "abs"]), (ch[1],)))),
                    lambda: Node("neg", (Node("div", (Node("neg", (ch[0],)), ch[1])),))]
    if op in ("sqrt", "log", "sqr", "abs"):
        options.append(lambda: Node(op, (Node(rng.choice(["neg", "abs"]), ch),)))
    if op == "sqr":
        options.append(lambda: Node("mul", (ch[0], ch[0])))
    if op == "G":
        options.append(lambda: Node("G2"))
    if is_nonneg(n):
        options.append(lambda: Node("abs", (n,)))
    return rng.choice(options)()


def dangerous_variants(n: Node) -> list[Node]:
    """Maps that are increasing or identities only in exact arithmetic (the old key stripped or merged them)."""
    out = [Node(op, (n,)) for op in ("tanh", "sigmoid", "exp", "mms", "zsn", "log")]
    out += [Node("log", (Node("exp", (n,)),)), Node("div", (n, Node("G"))), Node("div", (n, Node("X"))),
            Node("add", (Node("div", (n, Node("X"))), Node("div", (Node("X"), Node("X")))))]
    if is_nonneg(n):
        out += [Node("sqrt", (n,)), Node("sqr", (n,))]
    else:
        out += [Node("sqrt", (Node("sqr", (n,)),)), Node("abs", (n,))]
    return out


def formula_set(seed: int = 0) -> tuple[list[str], list[tuple[str, str]]]:
    texts, danger = [], []
    rng = random.Random(seed)
    for raw, count in ((PAPER, 330), (EXTENDED, 170)):
        space = validate({**raw, "limits": {"max_depth": 6, "max_size": 30}, "init": {"min_depth": 2, "max_depth": 5}})
        random.seed(seed + count)  # DEAP draws from the global random
        tb = build_toolbox(space, build_pset(space))
        for _ in range(count):
            base = parse(str(tb.individual()))
            texts.append(str(base))
            texts += [str(exact_variant(base, rng)) for _ in range(2)]
            if rng.random() < 0.3:
                d = rng.choice(dangerous_variants(base))
                texts.append(str(d))
                danger.append((str(base), str(d)))
    return texts, danger


# --------------------------------------------------------------------------------------------- checks
def _bitwise(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _masks(score: torch.Tensor, patterns=PATTERNS) -> tuple:
    """Every pattern's mask bytes (or the marker of unrankable scores, which the search gives the penalty)."""
    if not torch.isfinite(score).all():
        return ("not finite",)
    return tuple(hashlib.sha1(mask_from_scores(score, p).numpy().tobytes()).hexdigest() for p in patterns)


def _check_group(group: list[str], env: dict, where: str) -> int:
    """All members' scores equal elementwise and their masks identical; returns how many mask sets were computed.

    Masks are a deterministic function of the score tensor, so a member whose scores are bitwise identical to
    the first member's has its masks; only members that differ in some bit (a zero's sign) are masked here."""
    ref = evaluate(group[0], env)
    ref_masks, computed = None, 0
    for other in group[1:]:
        score = evaluate(other, env)
        assert same_values(ref, score), (where, group[0], other)
        if not _bitwise(ref, score):
            ref_masks = ref_masks or _masks(ref)
            assert _masks(score) == ref_masks, (where, group[0], other)
            computed += 1
    return computed


@pytest.fixture(scope="module")
def groups():
    texts, danger = formula_set()
    out: dict[str, list[str]] = {}
    for t in texts:
        members = out.setdefault(rank_key(t), [])
        if t not in members:
            members.append(t)
    return texts, danger, {k: v for k, v in out.items() if len(v) > 1}, len(out)


def test_equal_keys_give_identical_masks_on_real_statistics(real_layers, groups):
    """Every non-singleton key group on row slices (32 rows, whole input dimension) of the real layers, at both
    scales; a few groups with whole-tensor operations (mms, zsn, div, rown, coln) also on whole layers."""
    texts, _, multi, nkeys = groups
    members = sum(len(v) for v in multi.values())
    print(f"\n{len(texts)} formulas, {nkeys} keys, {len(multi)} non-singleton groups holding {members} distinct "
          "formulas")
    assert len(texts) >= 1000 and len(multi) >= 300 and members >= 1000
    masked, t0 = 0, time.time()
    for name, env in real_layers:
        part = row_slice(env, 32)
        for group in multi.values():
            masked += _check_group(group, part, f"{name} rows 0-31")
    t1 = time.time()
    whole = [g for g in multi.values() if any(op in g[0] for op in ("mms", "zsn", "div", "rown", "coln"))][:10]
    assert len(whole) == 10
    for name, env in real_layers[1::2]:
        for group in whole:
            masked += _check_group(group, env, name)
    print(f"mask sets computed for members not bitwise identical to their group's first: {masked}; "
          f"{t1 - t0:.1f} s on row slices, {time.time() - t1:.1f} s on whole layers")


def test_dangerous_variants_change_masks_on_real_statistics(real_layers, groups):
    """Teeth: the maps the old key stripped or merged (tanh, sigmoid, exp, sqrt, sqr, mms, zsn, log, norm factors,
    log(exp(.)), sqrt(sqr(.)), div by broadcast norms) really change masks on real statistics, so a key that
    merged them would fail the test above; the new key keeps every one of them apart."""
    _, danger, _, _ = groups
    differ = 0
    for base, d in danger:
        assert rank_key(base) != rank_key(d), (base, d)
    for base, d in danger[:40]:
        for name, env in real_layers:
            part = row_slice(env, 32)
            if _masks(evaluate(base, part), PATTERNS[::2]) != _masks(evaluate(d, part), PATTERNS[::2]):
                differ += 1
                break
    print(f"\n{differ} of the first 40 dangerous variants ({len(danger)} in all) change the masks")
    assert differ >= 8


def test_nm_selection_equals_stable_sort_on_real_statistics(real_layers):
    """The fast N:M selection (pairwise ranks, prune/masks.py) gives the stable sort's masks on whole real layers:
    |W| of the Q4_1 weights (ties in most groups), W, |W|·X and |W|·√X at both scales, 2:4 and 4:8."""
    from test_masks import sorted_nm

    tied_groups = 0
    for name, env in real_layers:
        w, x = env["W"], env["X"]
        for score in (w.abs(), w, w.abs() * x, w.abs() * x.sqrt()):
            for p in PATTERNS[2:]:
                assert torch.equal(mask_from_scores(score, p), sorted_nm(score, p.n, p.m)), (name, p)
        groups = w.abs().reshape(w.shape[0], -1, 4).sort(-1).values
        tied_groups += int((groups[..., 1:] == groups[..., :-1]).any(-1).sum())
    assert tied_groups > 100_000   # the check covers ties, not only distinct scores
