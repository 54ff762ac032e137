"""Exact simplification and the canonical ranking key.

The contract (checked by ``tests/test_rank_key_property.py`` on real SmolLM2 statistics):

    rank_key(a) == rank_key(b)  =>  a and b give elementwise-equal float32 scores (IEEE ``==``, NaN in the
                                    same places), hence identical masks for every pattern and group, with
                                    the same stable tie order, and the same NaN/Inf error.

so the search may answer a formula from another one's fitness without computing its masks.

**The key is the canonical form of the float computation itself.** It is built only from rewrites that are
exact in IEEE float32 with round-to-nearest, for every input (including 0, subnormals, inf and NaN), at any
tensor shape:

* ``identity(x) = x``; ``G2 = G`` (the same tensor);
* ``neg(neg(x)) = x``; ``sub(a, b) = add(a, neg(b))`` (IEEE defines a - b as a + (-b));
  ``neg(add(a, b)) = add(neg(a), neg(b))`` and ``mul(neg(a), b) = neg(mul(a, b))`` (rounding to nearest is
  symmetric in sign); ``div(neg(a), b) = neg(div(a, b))`` (the denominator is a positive number);
* ``div(a, neg(b)) = div(a, abs(b)) = div(a, b)`` (the Frobenius norm sees only |b|; b keeps its shape, so the
  broadcast factor of ``ops._div`` is unchanged);
* ``abs(abs(x)) = abs(neg(x)) = abs(x)``; ``sqrt``, ``log``, ``sqr`` of ``abs(x)`` or ``neg(x)`` are those of
  ``x`` (the protected sqrt and log take |x| first; |x|*|x| is bitwise x*x); ``abs(x) = x`` where x is
  non-negative in float (X, G, G1, abs, sqr, sqrt, exp, sigmoid, mms, sums, products and ``div`` of
  non-negative values; ``abs(-0.0)`` is ``+0.0``, which compares equal and no operation here tells apart);
* ``mul(x, x) = sqr(x)`` (``torch.square`` is x*x); commutativity of ``add`` and ``mul`` (operands sorted).

No rule changes the shape of a subtree, so ``div``'s norm (taken over the broadcast of both operands) is
computed on the same shapes on both sides.

**Not in the key** (each is true in exact arithmetic, or only ranking-equivalent, and fails in float32):

* associativity and distributivity, collecting terms, cancelling (``sympy.simplify``);
  ``sub(x, x) = 0`` (inf - inf is NaN);
* the opposing-operation pairs other than neg: ``sqrt(sqr(x))`` is not ``|x|`` (x*x under/overflows: 2158 of
  885k values differ on a random [576, 1536] tensor), ``exp(log(x))`` is not ``|x| + 1e-3``, ``log(exp(x))``
  is not x (exp clamps at 80 and rounds); ``mms(mms(x))`` is not ``mms(x)`` when the range is below 1e-12;
* stripping maps at the root that are increasing in exact arithmetic (tanh, sigmoid, exp, sqrt, sqr of a
  non-negative score, mms, zsn, log, positive constant factors and norms, added constants, powers of
  non-negative factors): every one of them is only non-decreasing in float32, it can merge neighbouring
  scores into ties that the stable lowest-index order then breaks differently, and no map of this kind is
  injective on all of float32. Measured on SmolLM2's ``layers.20.mlp.down_proj`` at the real protocol's scale:
  the Wanda score |W| sqrt(X) has 833,641 distinct values; sqrt of it 824,741, mms 831,870, exp 831,495, tanh
  653,370 (tanh(|W| X): 110,168 of 835,439; exp(W^2 mms(G)): 70,643 of 879,771). Masks then change: exp, sigmoid,
  zsn, log and tanh of Wanda's, the found formula's or Pruner-Zero's score change from 2 to 1,402 mask entries on
  real layers; sqrt, sqr, mms and norm factors changed none there, but nothing proves they never do. These
  equivalences are still found, at the cost of computing the masks: the fitness evaluator compares mask
  fingerprints before any perplexity run (``search.fitness``: the ``mask`` hit).
* ``div`` as a symbolic ``x / ||y||``: ``||y||`` depends on the broadcast shape (``div(G, X)`` divides by
  sqrt(out) * ||X||, ``div(X, X)`` by ||X||). ``to_sympy`` now writes that factor out (``n_out``, ``n_in``),
  but the key never relies on sympy at all.

``Simplified.text`` (what the search writes back into an offspring, and shows) is the canonical form printed
with ``sub`` and an outer ``neg`` where they make it shorter: every step is one of the exact rewrites above, so
its scores equal the original's elementwise (bit-identical up to the sign of a zero) and ``rank_key(text) ==
rank_key(original)``. ``Simplified.sympy`` / ``.latex`` are sympy's algebraic simplification, for display
only: they are exact in real arithmetic, not in float32, and nothing decides on them. ``ranking_class`` is the
former sympy ranking key (root maps stripped in exact arithmetic): it says which formulas rank alike in real
numbers (``mul(X, sqr(W))`` is Wanda's), for recognising a known metric met again, never for fitness.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import sympy as sp

from .expr import FormulaError, Node, as_node
from .ops import (
    N_IN,
    N_OUT,
    NONNEG_TERMINALS,
    OPS,
    ANY_TERMINALS,
    canonical_terminal,
    coln,
    fnorm,
    mms,
    plog,
    rown,
    sigmoid,
    symbol,
    zsn,
)

_SIMPLIFY_MAX_OPS = 40  # sympy.simplify is skipped above this many operations (it can take seconds)
KEY_VERSION = "v2"      # keys of earlier versions (sympy ranking keys) never equal a key of this one

_NONNEG_OPS = {"abs", "sqr", "sqrt", "exp", "sigmoid", "mms"}


# ------------------------------------------------------------------------------------------------ exact rules
def is_nonneg(n: Node) -> bool:
    """Whether the float32 value of ``n`` is >= 0 (or NaN) for every input."""
    if n.is_const:
        return n.value >= 0
    if n.is_terminal:
        return n.op in NONNEG_TERMINALS
    if n.op in _NONNEG_OPS:
        return True
    if n.op in ("add", "mul"):
        return all(is_nonneg(c) for c in n.children)
    if n.op in ("div", "rown", "coln", "identity"):
        return is_nonneg(n.children[0])
    return False


def _order(a: Node, b: Node) -> tuple[Node, Node]:
    return (a, b) if str(a) <= str(b) else (b, a)


def _canon(n: Node) -> Node:
    """One bottom-up rewrite at ``n`` (children already canonical); every rewrite is exact in float32."""
    op, ch = n.op, n.children
    if canonical_terminal(op) != op:
        return Node(canonical_terminal(op))
    if not ch:
        return n
    if op == "identity":
        return ch[0]
    if op == "sub":
        return _canon(Node("add", (ch[0], _canon(Node("neg", (ch[1],))))))
    a = ch[0]
    if op == "neg":
        if a.op == "neg":
            return a.children[0]
        if a.is_const:
            return Node.const(-a.value)
        if a.op == "add":
            return _canon(Node("add", tuple(_canon(Node("neg", (c,))) for c in a.children)))
        return n
    if op == "abs":
        if a.op in ("abs", "neg"):
            return _canon(Node("abs", (a.children[0],)))
        return a if is_nonneg(a) else n
    if op in ("sqrt", "log", "sqr") and a.op in ("abs", "neg"):
        return _canon(Node(op, (a.children[0],)))
    if op == "mul":
        b = ch[1]
        negs = (a.op == "neg") + (b.op == "neg")
        if negs:
            inner = _canon(Node("mul", tuple(c.children[0] if c.op == "neg" else c for c in (a, b))))
            return _canon(Node("neg", (inner,))) if negs == 1 else inner
        if a == b:
            return _canon(Node("sqr", (a,)))
        return Node("mul", _order(a, b))
    if op == "add":
        return Node("add", _order(a, ch[1]))
    if op == "div":
        b = ch[1]
        if b.op in ("neg", "abs"):
            return _canon(Node("div", (a, b.children[0])))
        if a.op == "neg":
            return _canon(Node("neg", (_canon(Node("div", (a.children[0], b))),)))
    return n


def canonical(formula: "str | Node") -> Node:
    """The canonical form of a formula's float computation (the tree its key prints)."""
    node = as_node(formula)
    if not node.children:
        return _canon(node)
    return _canon(Node(node.op, tuple(canonical(c) for c in node.children)))


def _pretty(n: Node) -> Node:
    """The canonical form with ``sub`` and an outer ``neg`` where they save nodes (exact rewrites, reversed)."""
    if not n.children:
        return n
    ch = tuple(_pretty(c) for c in n.children)
    if n.op == "add":
        a, b = ch
        if a.op == "neg" and b.op == "neg":
            return Node("neg", (Node("add", (a.children[0], b.children[0])),))
        if b.op == "neg":
            return Node("sub", (a, b.children[0]))
        if a.op == "neg":
            return Node("sub", (b, a.children[0]))
    return Node(n.op, ch)


def apply_rules(formula: "str | Node") -> Node:
    """The exact simplification of a formula as a formula of our operations (scores equal elementwise)."""
    return _pretty(canonical(formula))


# ------------------------------------------------------------------------------------------------ sympy (display)
_SHAPE_SIZE = {"s": sp.Integer(1), "r": N_IN, "f": N_OUT * N_IN}


def _broadcast(*shapes: str) -> str:
    return "f" if "f" in shapes else "r" if "r" in shapes else "s"


def _to_sympy(node: Node) -> tuple[sp.Expr, str]:
    """Sympy form and shape ('s' scalar, 'r' [1, in], 'f' [out, in]) of a formula."""
    if node.is_const:
        v = node.value
        e = sp.Integer(int(v)) if float(v).is_integer() else sp.nsimplify(v, rational=True) \
            if abs(v) >= 1e-6 else sp.Float(v)
        return e, "s"
    if node.is_terminal:
        return symbol(canonical_terminal(node.op)), "r" if node.op == "X" else "f"
    parts = [_to_sympy(c) for c in node.children]
    args = [p[0] for p in parts]
    if node.op == "div":  # x / ||broadcast(y)||_F = x / (sqrt(size(broadcast) / size(y)) * ||y||_F): shape of x
        (_, sx), (_, sy) = parts
        factor = sp.sqrt(_SHAPE_SIZE[_broadcast(sx, sy)] / _SHAPE_SIZE[sy])
        return OPS["div"].sympy(*args, factor=factor), sx
    return OPS[node.op].sympy(*args), _broadcast(*(p[1] for p in parts))


def to_sympy(formula: "str | Node") -> sp.Expr:
    return _to_sympy(as_node(formula))[0]


def simplify_sympy(expr: sp.Expr) -> sp.Expr:
    if sp.count_ops(expr) > _SIMPLIFY_MAX_OPS:
        return expr
    try:
        out = sp.simplify(expr)
    except Exception:  # noqa: BLE001 - sympy may give up on exotic inputs; the unsimplified form is still right
        return expr
    return out if sp.count_ops(out) <= sp.count_ops(expr) else expr


def _power(base: Node, p: sp.Rational) -> Node:
    """base ** p for p > 0 with denominator 1, 2 or 4 (sqrt of |base| for the halves)."""
    if p.q not in (1, 2, 4):
        raise FormulaError(f"power {p} has no form in the operation set")
    if p.q > 1:
        root = Node("sqrt", (base,)) if p.q == 2 else Node("sqrt", (Node("sqrt", (base,)),))
        whole, frac = divmod(p.p, p.q)
        parts = [root] * frac + ([_power(base, sp.Integer(whole))] if whole else [])
        return _product(parts)
    k = int(p)
    parts = [Node("sqr", (base,))] * (k // 2) + [base] * (k % 2)
    return _product(parts)


def _product(parts: list[Node]) -> Node:
    out = parts[0]
    for p in parts[1:]:
        out = Node("mul", (out, p))
    return out


def _from_sympy(e: sp.Expr) -> Node:
    if e.is_Symbol:
        if e.name not in ANY_TERMINALS:
            raise FormulaError(f"{e.name} (a tensor size) has no text form")
        return Node(e.name)
    if e.is_Number:
        if not e.is_finite:
            raise FormulaError("infinite constant")
        return Node.const(float(e))
    if e.is_Add:
        terms = sorted(e.args, key=sp.default_sort_key)
        pos = [t for t in terms if not t.could_extract_minus_sign()]
        neg = [-t for t in terms if t.could_extract_minus_sign()]
        out = _from_sympy(pos[0]) if pos else Node("neg", (_from_sympy(neg.pop(0)),))
        for t in pos[1:]:
            out = Node("add", (out, _from_sympy(t)))
        for t in neg:
            out = Node("sub", (out, _from_sympy(t)))
        return out
    if e.is_Mul:
        coeff, rest = e.as_coeff_Mul()
        if coeff < 0:
            return Node("neg", (_from_sympy(-e),))
        factors = sorted(sp.Mul.make_args(rest), key=sp.default_sort_key)
        norms = []
        plain = []
        for f in factors:
            if f.is_Pow and isinstance(f.base, fnorm) and f.exp.is_Integer and f.exp < 0:
                norms += [f.base.args[0]] * int(-f.exp)
            else:
                plain.append(_from_sympy(f))
        if coeff != 1:
            plain.insert(0, Node.const(float(coeff)))
        if not plain:
            plain = [Node.const(1.0)]
        out = _product(plain)
        for y in norms:
            out = Node("div", (out, _from_sympy(y)))
        return out
    if e.is_Pow:
        base, p = e.base, e.exp
        if isinstance(base, fnorm) and p.is_Integer and p < 0:
            out = Node.const(1.0)
            for _ in range(int(-p)):
                out = Node("div", (out, _from_sympy(base.args[0])))
            return out
        if not (p.is_Rational and p > 0):
            raise FormulaError(f"power {p} has no form in the operation set")
        if p.q > 1 and not base.is_nonnegative:
            if isinstance(base, sp.Abs):
                base = base.args[0]
            else:
                raise FormulaError("fractional power of a signed value")
        return _power(_from_sympy(base), p)
    if isinstance(e, sp.Abs):
        return Node("abs", (_from_sympy(e.args[0]),))
    table = {sp.exp: "exp", sp.tanh: "tanh", plog: "log", mms: "mms", zsn: "zsn", sigmoid: "sigmoid",
             rown: "rown", coln: "coln"}
    for cls, name in table.items():
        if isinstance(e, cls):
            return Node(name, (_from_sympy(e.args[0]),))
    raise FormulaError(f"no operation for {type(e).__name__}")


def to_text(expr: sp.Expr) -> str:
    return str(_from_sympy(expr))


# ------------------------------------------------------------------------------------------------ real-arithmetic class
def _positive_const(e: sp.Expr) -> bool:
    def const(a):
        return isinstance(a, fnorm) or a in (N_OUT, N_IN)
    return all(a.is_Number and a > 0 or const(a) or (a.is_Pow and const(a.base)) for a in sp.Mul.make_args(e))


def strip_monotone(e: sp.Expr) -> sp.Expr:
    """Remove strictly increasing maps at the root (they change no mask)."""
    while True:
        if e.is_Mul:
            const = [a for a in e.args if _positive_const(a)]
            if const and len(const) < len(e.args):
                e = sp.Mul(*[a for a in e.args if not _positive_const(a)])
                continue
        if e.is_Add:
            consts = [a for a in e.args if a.is_Number or _positive_const(a) or (-a).is_Number]
            if consts and len(consts) < len(e.args):
                e = sp.Add(*[a for a in e.args if a not in consts])
                continue
        if isinstance(e, (sp.exp, sp.tanh, sigmoid, mms, zsn)):
            e = e.args[0]
            continue
        if isinstance(e, plog):
            e = sp.Abs(e.args[0])
            continue
        if e.is_Pow and e.exp.is_positive and e.base.is_nonnegative:
            e = e.base
            continue
        if e.is_Pow and e.exp.is_positive and e.exp.is_even:
            e = sp.Abs(e.base)
            continue
        if e.is_Mul:
            normed = _normalise_powers(e)
            if normed is not None and normed != e:
                e = normed
                continue
        return e


def _normalise_powers(e: sp.Expr) -> sp.Expr | None:
    """A product of non-negative factors b_i^p_i ranks like its own positive power: scale the exponents so that
    the first factor (in sympy's sort order) has exponent 1 (``W**2*X`` ranks like ``Abs(W)*sqrt(X)``)."""
    parts = []
    for f in sp.Mul.make_args(e):
        base, p = f.as_base_exp()
        if not (p.is_Rational and p > 0):
            return None
        if not base.is_nonnegative:
            if p.is_Integer and p % 2 == 0:
                base = sp.Abs(base)
            else:
                return None
        parts.append((base, p))
    parts.sort(key=lambda bp: sp.default_sort_key(bp[0]))
    first = parts[0][1]
    if first == 1:
        return None
    return sp.Mul(*[b ** (p / first) for b, p in parts])


def ranking_class(formula: "str | Node") -> str:
    """The old sympy ranking key: formulas that rank weights alike in EXACT arithmetic (root maps increasing in
    real numbers stripped, powers of non-negative factors normalised). NOT a mask guarantee in float32 (see the
    module docstring) and never used for fitness: only to recognise a known metric met again (``mul(X, sqr(W))``
    is Wanda's ``|W| sqrt(X)`` in this sense) when choosing candidates."""
    return sp.srepr(strip_monotone(simplify(str(as_node(formula))).sympy))


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class Simplified:
    original: str
    rules: str          # the exact simplification (``apply_rules``), a formula of our operations
    sympy: sp.Expr      # algebraically simplified, for display only (exact in real arithmetic, not in float32)
    text: str           # exact simplified text: ``rules`` where it is no larger than the original, else the original
    key: str            # canonical key of the float computation: equal keys => equal scores => identical masks

    @property
    def latex(self) -> str:
        return sp.latex(self.sympy)


@lru_cache(maxsize=65536)
def simplify(formula: str) -> Simplified:
    node = as_node(formula)
    ruled = apply_rules(node)
    text = str(ruled) if ruled.size <= node.size else str(node)
    expr = simplify_sympy(to_sympy(ruled))
    return Simplified(str(node), str(ruled), expr, text, _key(node))


def rank_key(formula: "str | Node") -> str:
    """Canonical key: formulas with equal keys give elementwise-equal float32 scores (see the module docstring)."""
    return _key(as_node(formula))


@lru_cache(maxsize=65536)
def _key(node: Node) -> str:
    return f"{KEY_VERSION}:{canonical(node)}"
