"""Formula trees: one canonical text form (prefix, as DEAP prints it), an infix form people write and read, our own
parser for both, and evaluation with torch.

    >>> f = parse("mul(abs(mul(W, W)), mms(G))")
    >>> str(f), f.size, f.depth
    ('mul(abs(mul(W, W)), mms(G))', 7, 4)
    >>> parse("|W * W| * mms(G)") == f, infix(f)
    (True, '|W * W| * mms(G)')

The parser is a small tokenizer plus recursive descent (a prefix call is the infix grammar's function call) over a
checked nesting depth; it never calls eval/exec or sympify, and it refuses unknown names, wrong arity, unbalanced
parentheses and oversized input with one line that says what is wrong and where.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch

from ..errors import UserError
from .ops import ANY_TERMINALS, EXPERT_TERMINALS, OPS, TERMINALS, canonical_op

MAX_TEXT = 20_000
MAX_DEPTH = 64
MAX_NODES = 4_096

# ASCII only: Unicode digits such as '\u0663' must not read as numbers, nor Unicode spaces as blanks. Numbers are
# unsigned: a leading '-' or '+' is an operator (unary minus on a literal folds into a negative constant).
_TOKEN = re.compile(r"[ \t\r\n]*(?:(?P<num>(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?)"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),+\-*/^|]))", re.ASCII)
F32_MAX = 3.4028234663852886e38      # largest finite float32
F32_TINY = 1.1754943508222875e-38    # smallest normal float32


def shown(text: str, limit: int = 20) -> str:
    """A piece of user text safe to print on one line: control and non-ASCII characters escaped."""
    text = text[:limit]
    return "".join(ch if " " <= ch <= "~" else ch.encode("unicode_escape").decode("ascii") for ch in text)


class FormulaError(UserError):
    """A malformed formula."""


@dataclass(frozen=True)
class Node:
    """One node of a formula: an operation with children, a terminal (W, X, G, ...) or a constant."""

    op: str
    children: tuple["Node", ...] = ()
    value: float | None = None
    _text: str = field(default="", compare=False, repr=False)

    @staticmethod
    def const(value: float) -> "Node":
        return Node("const", (), float(value))

    @property
    def is_terminal(self) -> bool:
        return self.op in TERMINALS or self.op in EXPERT_TERMINALS

    @property
    def is_const(self) -> bool:
        return self.op == "const"

    def __str__(self) -> str:
        if self.is_const:
            v = self.value
            return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)
        if not self.children:
            return self.op
        return f"{self.op}({', '.join(str(c) for c in self.children)})"

    @property
    def size(self) -> int:
        return 1 + sum(c.size for c in self.children)

    @property
    def depth(self) -> int:
        return 1 + max((c.depth for c in self.children), default=0)

    def walk(self) -> Iterator["Node"]:
        yield self
        for c in self.children:
            yield from c.walk()

    def terminals(self) -> set[str]:
        return {n.op for n in self.walk() if n.is_terminal}


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    text = text.rstrip(" \t\r\n")
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            bad = shown(text[pos:].strip(" \t\r\n"))
            at = pos + len(text[pos:]) - len(text[pos:].lstrip(" \t\r\n"))
            raise FormulaError(f"cannot read formula at character {at + 1} ('{bad}'): write operations as "
                               "name(arg, ...) or infix (+ - * ^ |x|) over W, X, G and numbers")
        kind = m.lastgroup
        out.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


def parse(text: str, terminals: Mapping[str, str] = TERMINALS) -> Node:
    """Read a formula in prefix form (``mul(abs(W), sqrt(X))``, as DEAP prints it) or in infix form
    (``abs(W) * sqrt(X) + G``, ``|W| * X^0.5``); both give the same tree. Aliases such as ``skp``/``pow`` are
    accepted.

    Infix: ``+`` add, ``-`` sub (or neg in front), ``*`` mul, ``|x|`` abs, ``x^2`` sqr, ``x^4`` sqr(sqr),
    ``x^0.5`` sqrt, ``x^0.25`` sqrt(sqrt); usual precedence (``^`` over unary minus over ``*`` over ``+ -``),
    left to right. ``/`` is refused: the registry's ``div`` divides by a Frobenius norm, not elementwise.
    ``terminals``: the names a leaf may take (``ops.EXPERT_TERMINALS`` for expert scores).
    """
    if not isinstance(text, str):
        raise FormulaError(f"a formula is a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise FormulaError(f"formula is {len(text)} characters long (limit {MAX_TEXT}): simplify it")
    depth = deepest = 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            raise FormulaError(f"unbalanced parentheses: the ')' at character {i + 1} closes nothing")
        deepest = max(deepest, depth)
    if depth != 0:
        raise FormulaError(f"unbalanced parentheses: {depth} '(' left open")
    if deepest > MAX_DEPTH:
        raise FormulaError(f"formula nests {deepest} calls deep (limit {MAX_DEPTH}): simplify it")
    toks = _tokens(text)
    if not toks:
        raise FormulaError("empty formula: write one such as mul(abs(W), sqrt(X)) or |W| * sqrt(X)")
    reader = _Reader(toks, terminals)
    node, _ = reader.sum()
    if reader.pos != len(toks):
        kind, tok, at = toks[reader.pos]
        hint = " (a missing operator?)" if kind != "punct" or tok in "(|" else ""
        raise FormulaError(f"unexpected '{shown(tok)}' at character {at + 1} after a complete formula{hint}: "
                           "remove it")
    if node.size > MAX_NODES:
        raise FormulaError(f"formula has {node.size} nodes (limit {MAX_NODES}): simplify it")
    return node


def _constant(tok: str) -> float:
    """A numeric literal that float32 scores can hold exactly in range (no overflow, no flush to zero)."""
    value = float(tok)
    mantissa = re.split(r"[eE]", tok)[0]
    if not math.isfinite(value) or abs(value) > F32_MAX:
        raise FormulaError(f"constant {shown(tok)} overflows float32 (largest {F32_MAX:.4g}): use a smaller one")
    if value == 0.0 and re.search(r"[1-9]", mantissa) or 0.0 < abs(value) < F32_TINY:
        raise FormulaError(f"constant {shown(tok)} underflows float32 (smallest normal {F32_TINY:.4g}): "
                           "use 0 or a larger one")
    return value


# x^p for the exponents the registry expresses exactly: the ops applied innermost first
POWERS = {2.0: ("sqr",), 4.0: ("sqr", "sqr"), 0.5: ("sqrt",), 0.25: ("sqrt", "sqrt"), 1.0: ()}
MAX_TREE_DEPTH = 256      # infix chains (W + W + ...) nest without parentheses


class _Reader:
    """Recursive descent over the tokens; every method returns (node, tree depth)."""

    def __init__(self, toks, terminals: Mapping[str, str] = TERMINALS):
        self.toks, self.pos, self.nest, self.terminals = toks, 0, 0, terminals

    def peek(self) -> str | None:
        return self.toks[self.pos][1] if self.pos < len(self.toks) else None

    def where(self) -> str:
        return f"character {self.toks[self.pos][2] + 1}" if self.pos < len(self.toks) else "the end"

    def node(self, op: str, children: tuple, depth: int) -> tuple[Node, int]:
        if depth > MAX_TREE_DEPTH:
            raise FormulaError(f"formula nests more than {MAX_TREE_DEPTH} operations deep: simplify it")
        return Node(op, children), depth

    def enter(self) -> None:
        self.nest += 1
        if self.nest > MAX_DEPTH:
            raise FormulaError(f"formula nests more than {MAX_DEPTH} levels deep (limit {MAX_DEPTH}) near "
                               f"{self.where()}: simplify it")

    def sum(self) -> tuple[Node, int]:
        left, d = self.product()
        while self.peek() in ("+", "-") and self.toks[self.pos][0] == "punct":
            op = "add" if self.peek() == "+" else "sub"
            self.pos += 1
            right, e = self.product()
            left, d = self.node(op, (left, right), 1 + max(d, e))
        return left, d

    def product(self) -> tuple[Node, int]:
        left, d = self.unary()
        while self.peek() in ("*", "/") and self.toks[self.pos][0] == "punct":
            if self.peek() == "/":
                raise FormulaError(f"'/' at {self.where()}: there is no elementwise division; div(x, y) divides "
                                   "x by the Frobenius norm of y: write div(x, y) if that is meant")
            self.pos += 1
            right, e = self.unary()
            left, d = self.node("mul", (left, right), 1 + max(d, e))
        return left, d

    def unary(self) -> tuple[Node, int]:
        tok = self.peek()
        if tok in ("-", "+") and self.toks[self.pos][0] == "punct":
            self.pos += 1
            nxt = self.toks[self.pos] if self.pos < len(self.toks) else None
            after = self.toks[self.pos + 1][1] if self.pos + 1 < len(self.toks) else None
            if nxt is not None and nxt[0] == "num" and after != "^":   # -2 is a constant, -2^2 is -(2^2)
                self.pos += 1
                value = _constant(nxt[1])
                return Node.const(-value if tok == "-" else value), 1
            self.enter()
            child, d = self.unary()
            self.nest -= 1
            return (child, d) if tok == "+" else self.node("neg", (child,), d + 1)
        return self.power()

    def power(self) -> tuple[Node, int]:
        base, d = self.atom()
        if self.peek() != "^":
            return base, d
        self.pos += 1
        if self.pos >= len(self.toks) or self.toks[self.pos][0] != "num":
            raise FormulaError(f"'^' needs a number at {self.where()}: write x^2, x^4, x^0.5 or x^0.25")
        exponent = float(self.toks[self.pos][1])
        if exponent not in POWERS:
            raise FormulaError(f"exponent {shown(self.toks[self.pos][1])} at {self.where()}: the registry has x^2 "
                               "(sqr), x^4, x^0.5 (sqrt of |x|) and x^0.25; write other powers with mul/sqrt")
        self.pos += 1
        if self.peek() == "^":
            raise FormulaError(f"'^' at {self.where()} follows another power: add parentheses, e.g. (x^2)^2")
        for op in POWERS[exponent]:
            base, d = self.node(op, (base,), d + 1)
        return base, d

    def atom(self) -> tuple[Node, int]:
        if self.pos >= len(self.toks):
            raise FormulaError("formula ends too early: an argument is missing")
        kind, tok, at = self.toks[self.pos]
        if kind == "num":
            self.pos += 1
            return Node.const(_constant(tok)), 1
        if tok in ("(", "|"):
            close = ")" if tok == "(" else "|"
            self.pos += 1
            self.enter()
            inner, d = self.sum()
            self.nest -= 1
            if self.peek() != close:
                found = "the end" if self.peek() is None else f"'{shown(self.peek())}' at {self.where()}"
                raise FormulaError(f"the '{tok}' at character {at + 1} is not closed by '{close}': found {found}")
            self.pos += 1
            return (inner, d) if tok == "(" else self.node("abs", (inner,), d + 1)
        if kind == "punct":
            raise FormulaError(f"expected a name or number at character {at + 1}, found '{tok}'")
        has_args = self.pos + 1 < len(self.toks) and self.toks[self.pos + 1][1] == "("
        if tok in self.terminals:
            if has_args:
                raise FormulaError(f"'{tok}' at character {at + 1} is a terminal, not an operation: write it "
                                   "without parentheses")
            self.pos += 1
            return Node(tok), 1
        name = canonical_op(tok)
        if name not in OPS:
            raise FormulaError(f"unknown operation or terminal '{shown(tok)}' at character {at + 1}: use one of "
                               f"{', '.join(sorted(OPS))} over {', '.join(self.terminals)}")
        op = OPS[name]
        if not has_args:
            raise FormulaError(f"'{tok}' at character {at + 1} needs {op.arity} argument(s) in parentheses")
        self.pos += 2
        self.enter()
        args, depth = [], 0
        while True:
            child, d = self.sum()
            args.append(child)
            depth = max(depth, d)
            if self.peek() == ",":
                self.pos += 1
                continue
            if self.peek() == ")":
                self.pos += 1
                break
            if self.peek() is None:
                raise FormulaError(f"'{tok}(' at character {at + 1} is not closed")
            raise FormulaError(f"expected ',' or ')' in '{tok}(...)' at {self.where()}, found "
                               f"'{shown(self.peek())}'")
        self.nest -= 1
        if len(args) != op.arity:
            raise FormulaError(f"'{tok}' takes {op.arity} argument(s), got {len(args)} (character {at + 1})")
        return self.node(name, tuple(args), depth + 1)


# --------------------------------------------------------------------------------------------- infix printing
_SUM, _PROD, _UNARY, _POWER, _ATOM = range(5)


def infix(formula: "str | Node") -> str:
    """The formula as people write it (``|W| * sqrt(X) + G``); ``parse`` reads it back to the same tree.

    Only the parentheses the precedence needs are printed, except that a right operand of the same level keeps
    its parentheses (``a - (b - c)``, ``a * (b * c)``) so that the tree, not only the value, comes back.
    """
    return _infix(as_node(formula))[0]


def _wrap(part: tuple[str, int], level: int) -> str:
    return part[0] if part[1] >= level else f"({part[0]})"


def _infix(n: Node) -> tuple[str, int]:
    if n.is_const:
        return str(n), (_ATOM if n.value >= 0 and not str(n).startswith("-") else _UNARY)
    if n.is_terminal:
        return n.op, _ATOM
    kids = [_infix(c) for c in n.children]
    if n.op in ("add", "sub"):
        return f"{_wrap(kids[0], _SUM)} {'+' if n.op == 'add' else '-'} {_wrap(kids[1], _PROD)}", _SUM
    if n.op == "mul":
        return f"{_wrap(kids[0], _PROD)} * {_wrap(kids[1], _UNARY)}", _PROD
    if n.op == "neg":
        child = n.children[0]
        return "-" + (f"({kids[0][0]})" if child.is_const else _wrap(kids[0], _POWER)), _UNARY
    if n.op == "abs":
        return f"|{kids[0][0]}|", _ATOM
    if n.op == "sqr":
        inner = n.children[0]
        if inner.op == "sqr":   # x^4
            return f"{_wrap(_infix(inner.children[0]), _ATOM)}^4", _POWER
        return f"{_wrap(kids[0], _ATOM)}^2", _POWER
    return f"{n.op}({', '.join(k[0] for k in kids)})", _ATOM


def as_node(formula: "str | Node") -> Node:
    return formula if isinstance(formula, Node) else parse(formula, ANY_TERMINALS)


def evaluate(formula: "str | Node", env: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Score tensor of a formula; ``env`` maps terminal names to tensors (X is [1, in], W and G are [out, in]).

    Identical subtrees are computed once. The result always has the shape of ``env['W']``.
    """
    node = as_node(formula)
    memo: dict[Node, torch.Tensor] = {}
    like = env["W"]

    def run(n: Node) -> torch.Tensor:
        if n in memo:
            return memo[n]
        if n.is_const:
            out = torch.tensor(n.value, dtype=like.dtype, device=like.device)
        elif n.is_terminal:
            if n.op not in env:
                raise UserError(f"formula uses {n.op} but no {n.op} statistics were computed: "
                                f"calibrate with gradients (G) or activations (X)")
            out = env[n.op]
        else:
            out = OPS[n.op].torch(*(run(c) for c in n.children))
        memo[n] = out
        return out

    out = run(node)
    return out.expand_as(like) if out.shape != like.shape else out
