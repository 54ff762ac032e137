"""Formula parser, sympy conversion, opposing-operation rules and canonical keys."""
import random

import pytest
import torch

from prunerzero.metric import FormulaError, evaluate, infix, parse
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
    out = {"W": w, "X": torch.rand(1, cols, generator=g) * 3, "G": torch.rand(rows, cols, generator=g),
           "G1": torch.rand(rows, cols, generator=g) * 5}
    return {**out, "G2": out["G"]}  # as Stats.env: G is G2


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
    assert checked > 100


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


@pytest.mark.parametrize("written,prefix", [
    ("abs(W) * sqrt(X) + G", "add(mul(abs(W), sqrt(X)), G)"),
    ("|W| * X^0.5", "mul(abs(W), sqrt(X))"),
    ("|W| * (|log(X)| + sqrt(X))", "mul(abs(W), add(abs(log(X)), sqrt(X)))"),
    ("-W^2 + 2 * -X", "add(neg(sqr(W)), mul(2, neg(X)))"),
    ("W - -2 - X", "sub(sub(W, -2), X)"),
    ("W^4 * X^0.25", "mul(sqr(sqr(W)), sqrt(sqrt(X)))"),
    ("|W * W| * mms(G)", "mul(abs(mul(W, W)), mms(G))"),
    ("pow(W) * skp(X)", "mul(sqr(W), identity(X))"),
])
def test_infix_and_prefix_give_the_same_tree_and_key(written, prefix):
    assert parse(written) == parse(prefix)
    assert str(parse(written)) == prefix
    assert rank_key(written) == rank_key(prefix)


def test_infix_printer_reads_back_to_the_same_tree_on_random_trees():
    for text in random_formulas(300, seed=3):
        node = parse(text)
        assert parse(infix(node)) == node, (text, infix(node))
    assert infix("mul(sqrt(sub(X, G)), abs(W))") == "sqrt(X - G) * |W|"
    assert infix("neg(2)") == "-(2)" and parse("-(2)") == parse("neg(2)") and str(parse("-2")) == "-2"


@pytest.mark.parametrize("text,msg", [
    ("abs(W)*", "formula ends too early"),
    ("W / X", "'/' at character 3: there is no elementwise division"),
    ("W^3", "exponent 3 at character 3"),
    ("W^2^2", "'^' at character 4 follows another power"),
    ("|W * X", "the '|' at character 1 is not closed"),
    ("W W", "unexpected 'W' at character 3"),
    ("W + * X", "expected a name or number at character 5"),
    ("abs(W)*sqrt(X) $", "cannot read formula at character 16"),
])
def test_malformed_infix_refused_naming_the_position(text, msg):
    with pytest.raises(FormulaError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("^", r"\^")
                       .replace("*", r"\*").replace("|", r"\|").replace("$", r"\$")):
        parse(text)


def test_infix_nesting_is_bounded():
    with pytest.raises(FormulaError, match="deep"):
        parse("|" * 200 + "W" + "|" * 200)
    with pytest.raises(FormulaError, match="deep"):
        parse(" + ".join(["W"] * 600))
    assert parse(" + ".join(["W"] * 100)).depth == 100


def test_deep_but_legal_nesting_is_fine():
    text = "abs(" * 60 + "W" + ")" * 60
    assert parse(text).depth == 61


# --------------------------------------------------------------------------------------------- rules
def extreme_env(seed=0, rows=16, cols=24):
    """Values where float rewrites break: zeros of both signs, subnormal-making tiny values, huge values, ties."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.0, -0.0, 1e-30, 1e-20, 1e-3, 1.0, 1e3, 1e20, 3e38])
    pick = lambda *shape: scale[torch.randint(0, len(scale), shape, generator=g)]  # noqa: E731
    sign = torch.where(torch.rand(rows, cols, generator=g) < 0.5, -1.0, 1.0)
    out = {"W": sign * pick(rows, cols) * torch.rand(rows, cols, generator=g).round(decimals=1),
           "X": pick(1, cols), "G": pick(rows, cols), "G1": pick(rows, cols)}
    return {**out, "G2": out["G"]}


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Elementwise IEEE equality with NaN in the same places (what the key promises)."""
    if a.shape != b.shape:
        return False
    if torch.equal(a.view(torch.int32), b.view(torch.int32)):  # bitwise identical (the usual case)
        return True
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    return bool(torch.equal(nan_a, nan_b) and ((a == b) | nan_a).all())


def envs():
    return [env(0), env(1), extreme_env(0), extreme_env(1)]


RULE_CASES = [
    ("neg(neg(W))", "W"), ("identity(W)", "W"), ("abs(abs(W))", "abs(W)"), ("abs(neg(W))", "abs(W)"),
    ("log(neg(W))", "log(W)"), ("sqrt(abs(W))", "sqrt(W)"), ("sqr(neg(W))", "sqr(W)"), ("sqr(abs(W))", "sqr(W)"),
    ("abs(sqr(W))", "sqr(W)"), ("abs(X)", "X"), ("abs(mms(W))", "mms(W)"), ("mul(W, W)", "sqr(W)"),
    ("abs(add(X, G))", "add(G, X)"), ("sqrt(abs(neg(neg(W))))", "sqrt(W)"), ("sub(W, neg(X))", "add(W, X)"),
    ("neg(sub(W, X))", "sub(X, W)"), ("add(neg(W), neg(X))", "neg(add(W, X))"), ("mul(neg(W), neg(X))", "mul(W, X)"),
    ("mul(neg(W), X)", "neg(mul(W, X))"), ("div(neg(W), neg(X))", "neg(div(W, X))"), ("div(W, abs(G))", "div(W, G)"),
    ("mul(X, W)", "mul(W, X)"), ("add(X, W)", "add(W, X)"), ("G2", "G"), ("mul(G2, G)", "sqr(G)"),
]
# true in exact arithmetic, false in float32 (or only rank-equivalent): the rules must leave them alone
NOT_RULES = ["sqrt(sqr(W))", "sqr(sqrt(W))", "exp(log(W))", "log(exp(W))", "mms(mms(W))", "mms(zsn(W))",
             "zsn(mms(W))", "sub(G, G)", "add(add(W, X), G)", "mul(W, add(X, G))", "tanh(neg(W))"]


@pytest.mark.parametrize("before,after", RULE_CASES)
def test_rules_are_bit_exact_under_protected_semantics(before, after):
    assert str(apply_rules(before)) == after
    for e in envs():
        assert same_values(evaluate(before, e), evaluate(after, e)), (before, after)


@pytest.mark.parametrize("text", NOT_RULES)
def test_inexact_identities_are_not_rules(text):
    assert apply_rules(text).size == parse(text).size  # nothing removed, at most operands reordered


def test_sqrt_of_sqr_really_differs_in_float32():
    e = extreme_env(0)
    assert not same_values(evaluate("sqrt(sqr(W))", e), evaluate("abs(W)", e))


def test_rules_never_change_values_on_random_trees():
    for seed, text in enumerate(random_formulas(300, seed=2)):
        for e in (env(seed % 5), extreme_env(seed % 3)):
            assert same_values(evaluate(text, e), evaluate(apply_rules(text), e)), text


def test_simplified_text_has_bit_identical_scores_and_the_same_key():
    for seed, text in enumerate(random_formulas(300, seed=3)):
        s = simplify(text)
        assert parse(s.text).size <= parse(text).size
        assert rank_key(s.text) == s.key == rank_key(s.rules)
        for e in (env(seed % 5), extreme_env(seed % 3)):
            assert same_values(evaluate(text, e), evaluate(s.text, e)), (text, s.text)


def test_div_norm_depends_on_the_broadcast_shape():
    # ||X|| of X broadcast against G ([out, in]) is sqrt(out) * ||X||: the sum does not merge into one fraction
    a, b = "add(G, X)", "add(div(G, X), div(X, X))"
    assert rank_key(a) != rank_key(b)
    assert "n_out" in str(to_sympy("div(G, X)")) and "n_out" not in str(to_sympy("div(X, X)"))
    e = env(0)
    norm = torch.linalg.vector_norm(e["X"]) * e["G"].shape[0] ** 0.5
    torch.testing.assert_close(evaluate("div(G, X)", e), e["G"] / norm)


# --------------------------------------------------------------------------------------------- keys
EQUIVALENT = [
    ("mul(abs(W), sqrt(X))", "mul(sqrt(X), abs(W))"),                 # commutativity (exact)
    ("mul(abs(W), sqrt(X))", "abs(mul(abs(W), sqrt(X)))"),            # abs of a non-negative value
    ("mul(abs(W), sqrt(X))", "mul(abs(neg(W)), sqrt(abs(X)))"),
    ("abs(W)", "abs(abs(neg(W)))"), ("sqr(W)", "mul(W, W)"), ("sqr(W)", "mul(neg(W), neg(W))"),
    ("sub(W, X)", "neg(sub(X, W))"), ("sub(W, X)", "add(neg(X), W)"), ("W", "identity(neg(neg(W)))"),
    ("mul(abs(mul(W, W)), mms(G))", "mul(mms(G), sqr(W))"), ("div(W, X)", "neg(div(neg(W), abs(X)))"),
    ("add(mul(abs(W), sqrt(X)), G)", "add(G2, mul(sqrt(X), abs(W)))"),
]
DIFFERENT = [
    ("mul(abs(W), sqrt(X))", "mul(abs(W), X)"), ("abs(W)", "W"), ("W", "neg(W)"), ("mul(abs(W), G)", "mul(sqr(W), G)"),
    ("mul(sqr(W), mms(G))", "mul(sqr(W), G)"), ("add(W, X)", "add(W, G)"), ("mms(W)", "zsn(sqr(W))"),
    ("mul(abs(W), sqrt(X))", "mul(abs(W), sqrt(G))"),
    # unsound before: only rank-equivalent in exact arithmetic, merge or reorder ties in float32
    ("mul(abs(W), X)", "tanh(mul(abs(W), X))"), ("W", "sigmoid(W)"), ("W", "log(exp(W))"),
    ("mul(abs(W), sqrt(X))", "exp(mul(abs(W), sqrt(X)))"), ("mul(abs(W), sqrt(X))", "sqr(mul(abs(W), sqrt(X)))"),
    ("mul(abs(W), sqrt(X))", "mul(sqr(W), X)"), ("mul(abs(W), sqrt(X))", "mms(mul(abs(W), sqrt(X)))"),
    ("mul(abs(W), sqrt(X))", "div(mul(abs(W), sqrt(X)), G)"), ("abs(W)", "sqr(W)"),
    ("add(G, X)", "add(div(G, X), div(X, X))"),
    ("add(mul(abs(W), sqrt(X)), mul(abs(W), abs(G)))", "mul(abs(W), add(sqrt(X), G))"),   # distributivity
]


@pytest.mark.parametrize("a,b", EQUIVALENT)
def test_equivalent_formulas_share_a_key(a, b):
    assert rank_key(a) == rank_key(b)
    for e in envs():
        assert same_values(evaluate(a, e), evaluate(b, e))


@pytest.mark.parametrize("a,b", DIFFERENT)
def test_different_formulas_have_different_keys(a, b):
    assert rank_key(a) != rank_key(b)


def test_saturation_breaks_the_old_root_stripping():
    """tanh saturates at real X scales: the masks of tanh(|W| X) and |W| X differ, so their keys must too."""
    e = env(0, rows=8, cols=64)
    e["X"] = e["X"] * 1e4
    a, b = evaluate("mul(abs(W), X)", e), evaluate("tanh(mul(abs(W), X))", e)
    assert (b == 1.0).sum() > 0
    assert not torch.equal(mask_from_scores(a, Pattern(0.5, "row")), mask_from_scores(b, Pattern(0.5, "row")))
    assert rank_key("mul(abs(W), X)") != rank_key("tanh(mul(abs(W), X))")


def test_equal_keys_mean_equal_scores_on_random_trees():
    """Soundness of the key on many random formulas (ties and saturation included, nothing skipped)."""
    groups = {}
    for text in random_formulas(400, seed=4):
        groups.setdefault(rank_key(text), []).append(text)
        groups.setdefault(rank_key(apply_rules(text)), []).append(str(apply_rules(text)))
    pairs = 0
    for texts in groups.values():
        for other in texts[1:]:
            for e in (env(0, rows=8, cols=64), extreme_env(0, rows=8, cols=64)):
                pairs += 1
                assert same_values(evaluate(texts[0], e), evaluate(other, e)), (texts[0], other)
    assert pairs > 400


def test_known_metrics_parse_and_simplify():
    for m in KNOWN_METRICS.values():
        s = simplify(m.formula)
        assert s.key and s.latex


def test_ranking_class_is_the_real_arithmetic_ranking_and_not_the_key():
    """``ranking_class`` (the old sympy key, now with div's broadcast factor) groups formulas that rank alike in
    exact arithmetic, for recognising a known metric met again; the mask-safe key keeps them apart."""
    from prunerzero.metric.simplify import ranking_class

    assert ranking_class("mul(X, sqr(W))") == ranking_class("mul(abs(W), sqrt(X))")
    assert ranking_class("tanh(mul(abs(W), X))") == ranking_class("mul(abs(W), X)")
    assert rank_key("mul(X, sqr(W))") != rank_key("mul(abs(W), sqrt(X))")
    assert ranking_class("add(G, X)") != ranking_class("add(div(G, X), div(X, X))")
