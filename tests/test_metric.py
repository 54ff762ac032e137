"""Formula parser, sympy conversion, opposing-operation rules and canonical keys."""
import random

import pytest
import torch

from prunerzero.metric import FormulaError, evaluate, parse
from prunerzero.metric.known import KNOWN_METRICS
from prunerzero.metric.ops import OPS
from prunerzero.metric.simplify import apply_rules, rank_key, simplify, to_sympy, to_text
from prunerzero.prune.masks import Pattern, mask_from_scores
from prunerzero.search.space import validate
from prunerzero.search.toolbox import build_pset, build_toolbox, to_individual

FULL_SPACE = validate({"unary": sorted(o for o in OPS if OPS[o].arity == 1),
                       "binary": ["add", "sub", "mul", "div"], "terminals": ["W", "X", "G", "G1"],
                       "limits": {"max_depth": 6, "max_size": 40}})


def random_formulas(n, seed=0, space=FULL_SPACE):
    random.seed(seed)
    pset = build_pset(space)
    tb = build_toolbox(space, pset)
    return [str(tb.individual()) for _ in range(n)]


def env(seed=0, rows=16, cols=24):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    return {"W": w, "X": torch.rand(1, cols, generator=g) * 3, "G": torch.rand(rows, cols, generator=g),
            "G1": torch.rand(rows, cols, generator=g) * 5}


# --------------------------------------------------------------------------------------------- parser
def test_parse_and_print():
    f = parse("mul(abs(mul(W, W)), mms(G))")
    assert str(f) == "mul(abs(mul(W, W)), mms(G))"
    assert (f.size, f.depth) == (7, 4)
    assert str(parse("  add( W ,skp(X) ) ")) == "add(W, identity(X))"
    assert str(parse("mul(0.5, pow(W))")) == "mul(0.5, sqr(W))"


def test_text_tree_text_round_trip_on_random_trees():
    pset = build_pset(FULL_SPACE)
    for text in random_formulas(300):
        node = parse(text)
        assert str(node) == text
        assert str(to_individual(node, pset)) == text


def test_text_sympy_text_round_trip_on_random_trees():
    e = env()
    checked = 0
    for text in random_formulas(200, seed=1):
        expr = to_sympy(text)
        try:
            back = to_text(expr)
        except FormulaError:
            continue  # some sympy forms (e.g. a bare norm) have no text form; the simplifier keeps the tree then
        checked += 1
        assert to_sympy(back) == expr
        a, b = evaluate(text, e), evaluate(back, e)
        if torch.isfinite(a).all() and a.abs().max() < 1e6:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert checked > 150


@pytest.mark.parametrize("text,msg", [
    ("frob(W)", "unknown operation or terminal 'frob'"),
    ("abs(W, X)", "'abs' takes 1 argument(s), got 2"),
    ("add(W)", "'add' takes 2 argument(s), got 1"),
    ("mul(abs(W), sqrt(X)", "unbalanced parentheses"),
    ("mul(abs(W)), X)", "unbalanced parentheses"),
    ("abs" + "(abs" * 9999 + "(W" + ")" * 10000, "limit"),
    ("__import__(W)", "unknown operation or terminal '__import__'"),
    ("__import__('os').system('true')", "cannot read formula"),
    ("W(X)", "is a terminal"),
    ("abs", "needs 1 argument"),
    ("", "empty formula"),
    ("add(W, X) W", "after a complete formula"),
    ("add(W,, X)", "expected a name or number"),
    ("mul(W; X)", "cannot read formula"),
])
def test_malformed_formulas_refused(text, msg):
    with pytest.raises(FormulaError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        parse(text)


def test_deep_but_legal_nesting_is_fine():
    text = "abs(" * 60 + "W" + ")" * 60
    assert parse(text).depth == 61


# --------------------------------------------------------------------------------------------- rules
RULE_CASES = [
    ("neg(neg(W))", "W"), ("sqrt(sqr(W))", "abs(W)"), ("sqr(sqrt(W))", "abs(W)"),
    ("exp(log(W))", "add(abs(W), 0.001)"), ("identity(W)", "W"), ("abs(abs(W))", "abs(W)"),
    ("abs(neg(W))", "abs(W)"), ("log(neg(W))", "log(W)"), ("sqrt(abs(W))", "sqrt(W)"), ("sqr(neg(W))", "sqr(W)"),
    ("abs(sqr(W))", "sqr(W)"), ("abs(X)", "X"), ("abs(mms(W))", "mms(W)"), ("mms(zsn(W))", "mms(W)"),
    ("zsn(mms(W))", "zsn(W)"), ("mms(mms(W))", "mms(W)"), ("mul(W, W)", "sqr(W)"), ("sub(G, G)", "0"),
    ("abs(add(X, G))", "add(X, G)"), ("sqrt(sqr(neg(neg(W))))", "abs(W)"),
]


@pytest.mark.parametrize("before,after", RULE_CASES)
def test_rules_are_exact_under_protected_semantics(before, after):
    assert str(apply_rules(before)) == after
    for seed in range(3):
        e = env(seed)
        torch.testing.assert_close(evaluate(before, e), evaluate(after, e), rtol=1e-5, atol=1e-6)


def test_rules_never_change_values_on_random_trees():
    for seed, text in enumerate(random_formulas(300, seed=2)):
        e = env(seed % 5)
        a, b = evaluate(text, e), evaluate(apply_rules(text), e)
        finite = torch.isfinite(a) & torch.isfinite(b) & (a.abs() < 1e6)
        torch.testing.assert_close(a[finite], b[finite], rtol=1e-4, atol=1e-5)


def test_simplified_text_has_the_same_values():
    for seed, text in enumerate(random_formulas(200, seed=3)):
        e = env(seed % 5)
        a, b = evaluate(text, e), evaluate(simplify(text).text, e)
        finite = torch.isfinite(a) & torch.isfinite(b) & (a.abs() < 1e5)
        torch.testing.assert_close(a[finite], b[finite], rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------------------------- keys
EQUIVALENT = [
    ("mul(abs(W), sqrt(X))", "sqr(mul(abs(W), sqrt(X)))"),            # positive power of a non-negative score
    ("mul(abs(W), sqrt(X))", "mul(sqr(W), X)"),
    ("mul(abs(W), sqrt(X))", "mms(mul(abs(W), sqrt(X)))"),            # min-max scaling
    ("mul(abs(W), sqrt(X))", "log(mul(W, sqrt(X)))"),                 # log ranks like |.|
    ("mul(abs(W), sqrt(X))", "exp(mul(abs(W), sqrt(X)))"),
    ("mul(abs(W), sqrt(X))", "div(mul(abs(W), sqrt(X)), G)"),         # a positive constant factor
    ("mul(abs(W), sqrt(X))", "zsn(mul(sqrt(X), abs(W)))"),
    ("abs(W)", "sqr(W)"), ("abs(W)", "mul(W, W)"), ("W", "log(exp(W))"), ("W", "sigmoid(W)"),
    ("mul(abs(mul(W, W)), mms(G))", "mul(sqr(W), mms(G))"),
    ("add(mul(abs(W), sqrt(X)), mul(abs(W), abs(G)))", "mul(abs(W), add(sqrt(X), G))"),
]
DIFFERENT = [
    ("mul(abs(W), sqrt(X))", "mul(abs(W), X)"), ("abs(W)", "W"), ("W", "neg(W)"), ("mul(abs(W), G)", "mul(sqr(W), G)"),
    ("mul(sqr(W), mms(G))", "mul(sqr(W), G)"), ("add(W, X)", "add(W, G)"), ("mms(W)", "zsn(sqr(W))"),
    ("mul(abs(W), sqrt(X))", "mul(abs(W), sqrt(G))"),
]


@pytest.mark.parametrize("a,b", EQUIVALENT)
def test_equivalent_formulas_share_a_key(a, b):
    assert rank_key(a) == rank_key(b)
    e = env(7)
    assert torch.equal(mask_from_scores(evaluate(a, e), Pattern(0.5, "row")),
                       mask_from_scores(evaluate(b, e), Pattern(0.5, "row")))


@pytest.mark.parametrize("a,b", DIFFERENT)
def test_different_formulas_have_different_keys(a, b):
    assert rank_key(a) != rank_key(b)


def test_equal_keys_mean_equal_masks_on_random_trees():
    """Soundness of the key on many random formulas: a shared key never hides different masks."""
    groups = {}
    for text in random_formulas(400, seed=4):
        groups.setdefault(rank_key(text), []).append(text)
    pairs = 0
    for texts in groups.values():
        for other in texts[1:]:
            for seed in range(2):
                e = env(seed, rows=8, cols=64)
                a, b = evaluate(texts[0], e), evaluate(other, e)
                if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                    continue
                if a.unique().numel() < a.numel() or b.unique().numel() < b.numel():
                    continue  # ties (constant or saturated scores) are broken by position in both: skip
                pairs += 1
                assert torch.equal(mask_from_scores(a, Pattern(0.5, "row")), mask_from_scores(b, Pattern(0.5, "row"))), \
                    (texts[0], other)
    assert pairs > 20


def test_known_metrics_parse_and_simplify():
    for m in KNOWN_METRICS.values():
        s = simplify(m.formula)
        assert s.key and s.latex
