"""Simplification and canonical keys.

Three layers, each true under the protected semantics of ``ops.py``:

1. ``apply_rules`` - the opposing-operation rule (an operation applied to its own inverse is removed, in the form
   that is exact: ``neg(neg(x)) = x``, ``sqrt(sqr(x)) = abs(x)`` (not x), ``sqr(sqrt(x)) = abs(x)``,
   ``exp(log(x)) = |x| + 1e-3``) plus the absorptions the protected ops imply (``log``/``sqrt``/``sqr`` ignore the
   sign of their input, ``abs`` of a non-negative value is that value, ``mms``/``zsn`` swallow each other and
   positive affine maps, ``mul(x, x) = sqr(x)``, ``identity(x) = x``).
2. ``to_sympy`` + ``sympy.simplify`` - algebra (collect terms, cancel), with W real and X, G non-negative.
3. ``rank_key`` - two formulas that rank every weight the same way prune the same weights. At the root we strip
   what is strictly increasing on the whole score: a positive constant factor (numbers and whole-tensor norms),
   an added constant, exp, sigmoid, tanh, mms, zsn, a positive power of a non-negative score (sqrt, sqr), and
   log (log(|s| + eps) ranks like |s|). ``log(exp(x))`` is not ``x``, but at the root it ranks like ``x``.

``to_text(sympy)`` turns a simplified expression back into our operations where it can (``FormulaError`` where it
cannot, e.g. a non-integer power); callers then keep the rule-simplified tree.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import sympy as sp

from .expr import FormulaError, Node, as_node
from .ops import LOG_EPS, NONNEG_TERMINALS, OPS, coln, fnorm, mms, plog, rown, sigmoid, symbol, zsn

_SIMPLIFY_MAX_OPS = 40  # sympy.simplify is skipped above this many operations (it can take seconds)


# ------------------------------------------------------------------------------------------------ layer 1: rules
def is_nonneg(n: Node) -> bool:
    if n.is_const:
        return n.value >= 0
    if n.is_terminal:
        return n.op in NONNEG_TERMINALS
    if OPS[n.op].nonneg:
        return True
    if n.op in ("add", "mul"):
        return all(is_nonneg(c) for c in n.children)
    if n.op == "div":
        return is_nonneg(n.children[0])
    return False


def _rule(n: Node) -> Node:
    """One bottom-up rewrite step at node ``n`` (children already simplified)."""
    op, ch = n.op, n.children
    if op == "identity":
        return ch[0]
    if op in OPS and len(ch) == 1:
        a = ch[0]
        if op == "neg" and a.op == "neg":
            return a.children[0]
        if op == "sqrt" and a.op == "sqr" or op == "sqr" and a.op == "sqrt":
            return _rule(Node("abs", (a.children[0],)))
        if op == "exp" and a.op == "log":
            return Node("add", (_rule(Node("abs", (a.children[0],))), Node.const(LOG_EPS)))
        if op in ("sqrt", "log", "sqr", "abs") and a.op in ("abs", "neg"):
            return _rule(Node(op, (a.children[0],)))
        if op == "abs" and is_nonneg(a):
            return a
        if op in ("mms", "zsn") and a.op in ("mms", "zsn"):
            return _rule(Node(op, (a.children[0],)))
        if op == "neg" and a.is_const:
            return Node.const(-a.value)
    if op == "mul" and ch[0] == ch[1]:
        return _rule(Node("sqr", (ch[0],)))
    if op == "sub" and ch[0] == ch[1]:
        return Node.const(0.0)
    return n


def apply_rules(formula: "str | Node") -> Node:
    node = as_node(formula)
    if not node.children:
        return node
    return _rule(Node(node.op, tuple(apply_rules(c) for c in node.children)))


# ------------------------------------------------------------------------------------------------ layer 2: sympy
def to_sympy(formula: "str | Node") -> sp.Expr:
    node = as_node(formula)
    if node.is_const:
        v = node.value
        return sp.Integer(int(v)) if float(v).is_integer() else sp.nsimplify(v, rational=True) \
            if abs(v) >= 1e-6 else sp.Float(v)
    if node.is_terminal:
        return symbol("G" if node.op == "G2" else node.op)
    return OPS[node.op].sympy(*(to_sympy(c) for c in node.children))


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


# ------------------------------------------------------------------------------------------------ layer 3: ranking
def _positive_const(e: sp.Expr) -> bool:
    return all(a.is_Number and a > 0 or isinstance(a, fnorm) or (a.is_Pow and isinstance(a.base, fnorm))
               for a in sp.Mul.make_args(e))


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


@dataclass(frozen=True)
class Simplified:
    original: str
    rules: str          # after the opposing-operation rules (always a valid formula of our ops)
    sympy: sp.Expr      # algebraically simplified
    text: str           # simplified text form (sympy's when it maps back to our ops, else ``rules``)
    key: str            # canonical ranking key: equal keys => identical masks

    @property
    def latex(self) -> str:
        return sp.latex(self.sympy)


@lru_cache(maxsize=65536)
def simplify(formula: str) -> Simplified:
    node = as_node(formula)
    ruled = apply_rules(node)
    expr = simplify_sympy(to_sympy(ruled))
    try:
        text_node = _from_sympy(expr)
        text = str(text_node) if text_node.size <= ruled.size else str(ruled)
    except FormulaError:
        text = str(ruled)
    key = sp.srepr(strip_monotone(expr))
    return Simplified(str(node), str(ruled), expr, text, key)


def rank_key(formula: str) -> str:
    return simplify(str(as_node(formula))).key
